r"""Trains a collaborative image classifier end to end.

    python -m cfimage.train                              # built-in demo catalogue
    python -m cfimage.train --flagfile=configs/movielens_posters_cpu.cfg

Sections of main(): set-up -> data -> stage 1 (CF item embeddings, TFRS) ->
stage 2 (multitask image model, Keras 3) -> evaluation on test -> export.
Everything a run writes lands under --workdir; the export goes to
<export_dir>/<model_name>/<version>/. The flags and their checks are in
cfimage/train_flags.py.
"""

import contextlib
import json
import os
import time

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app

from cfimage.train_flags import FLAGS, check_flags, fail, log


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    image_size, fractions = check_flags()
    started = time.time()

    # --- Set-up: workdir, precision, seeds -------------------------------------
    import keras
    import numpy as np
    import pandas as pd
    import tensorflow as tf

    from cfimage.catalogue import reader as catalogue_lib
    from cfimage import atomic
    from cfimage.errors import UserError
    from cfimage.stage1 import pipeline, scan, two_tower
    from cfimage.stage2 import confidence
    from cfimage.stage2 import data
    from cfimage.catalogue import demo
    from cfimage.serving import export
    from cfimage.stage2 import fit
    from cfimage.stage2 import losses
    from cfimage.stage2 import model as model_lib
    from cfimage.stage2.callbacks import SelectByValidationMAP
    from cfimage.stage2.metrics import evaluate_scores

    model_name = FLAGS.model_name or (
        os.path.basename(os.path.normpath(FLAGS.catalogue)) if FLAGS.catalogue
        else "cfimage_demo")
    workdir = os.path.abspath(FLAGS.workdir or os.path.join("runs", model_name))
    os.makedirs(workdir, exist_ok=True)
    atomic.write_text(os.path.join(workdir, "flags.txt"), FLAGS.flags_into_string())
    log(f"workdir {workdir}")

    if FLAGS.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    gpus = tf.config.list_physical_devices("GPU")
    mixed = FLAGS.mixed_precision == "true" or (FLAGS.mixed_precision == "auto" and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    jit = FLAGS.jit_compile == "true" or (FLAGS.jit_compile == "auto" and bool(gpus))
    log(f"devices: {len(gpus)} GPU(s); precision {'mixed_float16' if mixed else 'float32'}; "
        f"XLA {'on' if jit else 'off'}")

    # Stage 2's strategy. multi_worker must exist before TensorFlow runs any op. Only the
    # chief writes the run's outputs; other workers write under <workdir>/workertemp_*.
    from cfimage.stage2 import distribute
    from cfimage.stage2 import tfrecords
    if FLAGS.strategy == "multi_worker" and not (FLAGS.cf_embeddings or FLAGS.stage1_only):
        fail("--strategy=multi_worker needs --cf_embeddings: stage 1 (TFRS) runs in one "
             "process; run it first with --stage1_only and pass its cf_embeddings.npz "
             "(README, 'Training on several machines')")
    try:
        strategy = distribute.make_strategy(FLAGS.strategy, FLAGS.tpu)
    except ValueError as error:
        fail(str(error))
    chief = distribute.is_chief(strategy)
    outdir = distribute.output_dir(workdir, strategy)
    global_batch, learning_rate = distribute.scaled(FLAGS.batch_size, FLAGS.learning_rate,
                                                    strategy)
    log(f"strategy: {distribute.describe(strategy)}; global batch {global_batch} "
        f"(--batch_size={FLAGS.batch_size} per replica), learning rate {learning_rate:g} "
        f"(--learning_rate={FLAGS.learning_rate:g} x {strategy.num_replicas_in_sync})"
        + ("" if chief else f"; this worker writes to {outdir}"))

    # --- Data: the catalogue ---------------------------------------------------
    root = FLAGS.catalogue
    if root is None:
        root = os.path.join(workdir, "demo_catalogue")
        log(f"no --catalogue: generating the demo catalogue (synthetic) in {root}")
        demo.make_demo_catalogue(root, seed=FLAGS.demo_seed, num_items=FLAGS.demo_items,
                                 num_users=FLAGS.demo_users)
    spec = catalogue_lib.CatalogueSpec(
        items_file=FLAGS.items_file, interactions_file=FLAGS.interactions_file,
        item_id_column=FLAGS.item_id_column, image_column=FLAGS.image_column,
        labels_column=FLAGS.labels_column, label_separator=FLAGS.label_separator,
        user_id_column=FLAGS.user_id_column,
        interaction_item_column=FLAGS.interaction_item_column,
        weight_column=FLAGS.weight_column, timestamp_column=FLAGS.timestamp_column,
        min_label_count=FLAGS.min_label_count, ignore_labels=tuple(FLAGS.ignore_labels),
        unknown_interaction_items=FLAGS.unknown_interaction_items)
    try:
        # A large or sharded log is streamed by stage 1 (cfimage/stage1), never loaded into pandas.
        stream, stream_why = pipeline.should_stream(FLAGS.stream_interactions, root,
                                                    FLAGS.interactions_file)
        catalogue = catalogue_lib.load_catalogue(root, spec, interactions=not stream)
    except catalogue_lib.CatalogueError as error:
        fail(str(error))
    listed_ids = catalogue.item_ids  # as in items.csv, before unreadable images are dropped
    # With --tfrecords the images were decoded when the shards were written.
    bad = {} if FLAGS.tfrecords else data.find_unreadable_images(catalogue.image_paths, log=log)
    if bad:
        first = min(bad)
        where = (f"{os.path.join(catalogue.root, FLAGS.items_file)}, line {first + 2}, item "
                 f"{str(catalogue.item_ids[first])!r}")
        if FLAGS.on_bad_image == "fail":
            fail(
                f"{where}: image {catalogue.image_paths[first]} cannot be read "
                f"({bad[first]}); {len(bad)} unreadable image(s) in all. Fix or remove them, "
                "or pass --on_bad_image=skip to leave those items out.")
        skipped = pd.DataFrame({"item_id": catalogue.item_ids[sorted(bad)],
                                "image": catalogue.image_paths[sorted(bad)],
                                "reason": [bad[i] for i in sorted(bad)]})
        skipped.to_csv(os.path.join(workdir, "skipped_images.csv"), index=False)
        log(f"skipped {len(bad)} item(s) with unreadable images (--on_bad_image=skip): "
            f"{', '.join(skipped.item_id[:20])}{' ...' if len(bad) > 20 else ''}; "
            f"list in {os.path.join(workdir, 'skipped_images.csv')}")
        drop = np.isin(np.arange(catalogue.num_items), sorted(bad))
        catalogue = catalogue_lib.drop_items(catalogue, drop)
    log(catalogue_lib.describe(catalogue))
    for note in catalogue.notes:
        log(note)
    multi_label = catalogue.multi_label if FLAGS.task == "auto" else FLAGS.task == "multi_label"

    # --- Stage 1: collaborative item embeddings --------------------------------
    stage1_config = two_tower.TwoTowerConfig(
        embedding_dim=FLAGS.cf_dim, holdout_fraction=FLAGS.cf_holdout,
        recall_k=FLAGS.cf_recall_k, min_interactions=FLAGS.cf_min_interactions,
        seed=FLAGS.seed)
    for field, value in [("epochs", FLAGS.cf_epochs), ("learning_rate", FLAGS.cf_learning_rate),
                         ("temperature", FLAGS.cf_temperature)]:
        if value is not None:
            setattr(stage1_config, field, value)
    try:
        stage1_config.validate()  # before any work: out-of-range --cf_* flags
    except ValueError as error:
        fail(f"stage-1 flags (--cf_dim, --cf_holdout, --cf_epochs, ...): {error}")
    stream_config = scan.StreamConfig(shuffle_buffer=FLAGS.cf_shuffle_buffer)
    try:
        stage1 = pipeline.run_stage1(
            catalogue, spec, listed_ids, stage1_config, stream_config, workdir, outdir,
            cf_embeddings=FLAGS.cf_embeddings, streaming=stream,
            stream_why=f"{stream_why}; --stream_interactions={FLAGS.stream_interactions}",
            log=log)
    except UserError as error:
        fail(str(error))
    vectors, has_vector, stage1_metrics = stage1.vectors, stage1.has_vector, stage1.metrics
    cf_targets, cf_scaling = data.scale_cf_targets(vectors, has_vector, FLAGS.cf_target_scale)
    log(f"CF targets: {int(has_vector.sum())}/{catalogue.num_items} items have a vector "
        f"(dim {vectors.shape[1]}); the others are masked in the CF loss")
    if FLAGS.stage1_only:
        log(f"--stage1_only: stopping after stage 1 ({stage1.source})")
        return

    # --- Split and label masking -----------------------------------------------
    try:
        splits = data.split_items(catalogue.num_items, catalogue.labelled, fractions,
                                  FLAGS.seed)
    except ValueError as error:  # too few labelled items for validation and test
        fail(f"--split={','.join(FLAGS.split)}: {error}")
    labelled = data.mask_labels(catalogue.labelled, splits["train"], FLAGS.label_ratio,
                                FLAGS.seed)
    log(f"split (seed {FLAGS.seed}): train {len(splits['train'])} "
        f"({int(labelled[splits['train']].sum())} labelled, label_ratio {FLAGS.label_ratio}), "
        f"validation {len(splits['validation'])}, test {len(splits['test'])}")
    train_rows = splits["train"]
    counts = None
    if FLAGS.cf_confidence == "sqrt":  # interactions per item; a streamed log is scanned once
        try:
            counts = pipeline.interactions_per_item(catalogue, stage1, spec, listed_ids,
                                                    stage1_config, stream_config, log=log)
        except UserError as error:
            fail(str(error))
    weights = confidence.confidence_weights(
        FLAGS.cf_confidence, has_vector, interaction_counts=counts,
        vectors=vectors, labels=catalogue.labels, labelled=labelled, train_rows=train_rows,
        seed=FLAGS.seed)
    if FLAGS.cf_confidence != "uniform":
        log(f"CF confidence weights ({FLAGS.cf_confidence}): training items "
            f"{weights[train_rows][has_vector[train_rows]].min():.2f}.."
            f"{weights[train_rows].max():.2f}, mean "
            f"{weights[train_rows][has_vector[train_rows]].mean():.2f}")
    cf_for_loss = cf_targets
    if FLAGS.arm == "contrastive":  # the target is the nearest CF neighbour's vector
        neighbours = data.nearest_cf_neighbours(cf_targets, has_vector)
        cf_for_loss = np.where(neighbours[:, None] >= 0, cf_targets[neighbours], 0.0)
        weights = np.where(neighbours >= 0, weights, 0.0).astype(np.float32)
    targets = data.pack_targets(catalogue.labels, labelled, cf_for_loss, weights)

    shards = FLAGS.tfrecords
    limit = (FLAGS.cache_limit_gb * 2**30 if FLAGS.cache_limit_gb > 0
             else tfrecords.default_cache_limit())
    needed = tfrecords.cache_bytes(catalogue.num_items, image_size)
    if not shards and needed > limit:
        log(f"the decoded images need {needed / 2**30:.2f} GiB, more than the cache limit "
            f"{limit / 2**30:.2f} GiB (--cache_limit_gb): stage 2 streams them from TFRecords")
        shards = tfrecords.shards_for_run(
            os.path.join(outdir, "tfrecords_{}x{}".format(*image_size)), catalogue.item_ids,
            catalogue.image_paths, targets, image_size, catalogue.label_names, log=log)

    def dataset(name, training):
        index = splits[name]
        if shards:  # images from the shards, targets of this run (by item_id)
            return tfrecords.make_dataset(shards, image_size, global_batch, training,
                                          FLAGS.seed, item_ids=catalogue.item_ids[index],
                                          targets={k: v[index] for k, v in targets.items()})
        return data.make_dataset(catalogue.image_paths[index],
                                 {k: v[index] for k, v in targets.items()}, image_size,
                                 global_batch, training=training, seed=FLAGS.seed)

    train_ds, val_ds, test_ds = (dataset("train", True), dataset("validation", False),
                                 dataset("test", False))

    # --- Stage 2: the multitask image model ------------------------------------
    # The model, its optimizer and its metrics are created in the strategy's scope.
    strategy_scope = contextlib.ExitStack()
    strategy_scope.enter_context(strategy.scope())
    keras.utils.set_random_seed(FLAGS.seed)  # same initial weights for every arm of a seed
    try:
        model = model_lib.build_model(FLAGS.backbone, FLAGS.weights, image_size,
                                      catalogue.num_classes, multi_label, vectors.shape[1],
                                      dropout=FLAGS.dropout)
    except (ValueError, ImportError, FileNotFoundError, RuntimeError) as error:
        fail(str(error))
    log(f"model {model.name}: {model.count_params():,} parameters, image size {image_size}")
    if FLAGS.sync_batchnorm:
        log(f"synchronised BatchNormalization in {model_lib.synchronize_batchnorm(model)} "
            f"layers, over {strategy.num_replicas_in_sync} replica(s)")
    steps_per_epoch = -(-len(train_rows) // global_batch)
    label_loss = (losses.MaskedWeightedBCE(losses.positive_weights(
        catalogue.labels[train_rows], labelled[train_rows]))
        if multi_label else losses.MaskedCrossEntropy())

    def optimizer(epochs):
        return fit.make_optimizer(FLAGS.optimizer, learning_rate, FLAGS.weight_decay,
                                  FLAGS.clipnorm, epochs * steps_per_epoch)

    checkpoint_dir = os.path.join(outdir, "checkpoints")
    best_path = os.path.join(checkpoint_dir, "best.weights.h5")
    os.makedirs(checkpoint_dir, exist_ok=True)
    label_weight, cf_weight = 1.0, FLAGS.cf_weight
    if FLAGS.arm == "two_stage":
        # Phase 1 regresses the CF targets only; phase 2 trains on labels only.
        pretrained = os.path.join(checkpoint_dir, "pretrained_cf.weights.h5")
        if os.path.exists(pretrained):
            log(f"two-stage: phase 1 already done, loading {pretrained}")
        else:
            log(f"two-stage: phase 1, {FLAGS.pretrain_epochs} epochs on the CF targets only")
            fit.compile_model(model, optimizer(FLAGS.pretrain_epochs), label_loss, "two_stage",
                              0.0, 1.0, jit)
            fit.resumable_fit(model, train_ds, val_ds, FLAGS.pretrain_epochs, outdir,
                              "pretrain", log=log, max_loss=FLAGS.max_loss)
            atomic.save_weights(model, pretrained)
        model.load_weights(pretrained)
        label_weight, cf_weight = 1.0, 0.0
    fit.compile_model(model, optimizer(FLAGS.epochs), label_loss, FLAGS.arm, label_weight,
                      cf_weight, jit, triplet_margin=FLAGS.triplet_margin)
    strategy_scope.close()

    if not os.path.isdir(os.path.join(outdir, "backup")):
        # A fresh run: forget the best checkpoint of an earlier run in this workdir.
        for stale in (best_path, best_path.replace(".weights.h5", ".json")):
            if os.path.exists(stale):
                os.remove(stale)
    else:
        log(f"resuming stage 2 from {os.path.join(outdir, 'backup')}")
    log(f"stage 2 ({FLAGS.arm}): {FLAGS.epochs} epochs of {steps_per_epoch} steps, "
        f"λ = {cf_weight} (the first step traces the graph and takes a while)")
    selector = SelectByValidationMAP(val_ds, catalogue.labels[splits["validation"]],
                                     catalogue.label_names, best_path, log=log)
    fit.resumable_fit(model, train_ds, val_ds, FLAGS.epochs, outdir, "", callbacks=[selector],
                      log=log, max_loss=FLAGS.max_loss)

    # --- Evaluation: test split, once, at the checkpoint chosen on validation --
    model.load_weights(best_path)
    best = json.load(open(best_path.replace(".weights.h5", ".json")))
    test_scores = model.predict(test_ds, verbose=0)["labels"]
    test = evaluate_scores(catalogue.labels[splits["test"]], test_scores, catalogue.label_names)
    metrics = {"test": test, "best_epoch": best["epoch"], "validation_map": best["val_map"],
               "stage1": stage1_metrics, "cf_scaling": cf_scaling,
               "train_seconds": round(time.time() - started, 1),
               "num_items": {k: int(len(v)) for k, v in splits.items()}}
    atomic.write_json(os.path.join(outdir, "metrics.json"), metrics)
    log(f"test (checkpoint of epoch {best['epoch']}, chosen on validation mAP "
        f"{best['val_map']:.4f}): macro mAP {test['macro_map']:.4f}, "
        f"precision@1 {test['precision_at_1']:.4f} on {test['num_items']} items")
    for name, ap in sorted(test["per_class_ap"].items(), key=lambda kv: -kv[1]):
        log(f"  AP {name:<24s} {ap:.4f}")
    if not chief:
        log(f"done in {time.time() - started:.0f} s (not the chief: the chief exports)")
        return

    # --- Export: SavedModel for TF Serving ---------------------------------------
    if FLAGS.export:
        # User vectors only from this workdir's own stage 1: vectors from another
        # two-tower run (or for --cf_embeddings) live in a different space.
        users_path = os.path.join(workdir, "user_embeddings.npz")
        users = {"user_ids": None, "user_vectors": None}
        if not FLAGS.cf_embeddings and os.path.isfile(users_path):
            with np.load(users_path) as saved:
                users = {"user_ids": saved["ids"], "user_vectors": saved["vectors"]}
        path = export.export_saved_model(
            model, catalogue.label_names, image_size, FLAGS.export_dir, model_name,
            metadata={"backbone": FLAGS.backbone, "multi_label": multi_label,
                      "test_macro_map": test["macro_map"], "workdir": workdir},
            cf_scaling=cf_scaling, item_ids=catalogue.item_ids[has_vector],
            item_vectors=vectors[has_vector], **users, log=log)
        signatures = json.load(open(os.path.join(path, "assets.extra", "cfimage.json")))
        log(f"exported SavedModel to {path} (signatures: "
            f"{', '.join(signatures['signatures'])})")
    log(f"done in {time.time() - started:.0f} s")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
