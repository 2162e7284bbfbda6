r"""Trains a collaborative image classifier end to end.

    python -m cfimage.train                              # built-in demo catalogue
    python -m cfimage.train --flagfile=configs/movielens_posters_cpu.cfg

Sections of main(): set-up -> data -> stage 1 (CF item embeddings, TFRS) ->
stage 2 (multitask image model, Keras 3) -> evaluation on test -> export.
Everything a run writes lands under --workdir; the export goes to
<export_dir>/<model_name>/<version>/.
"""

import json
import os
import sys
import time

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

FLAGS = flags.FLAGS

# --- Catalogue ---------------------------------------------------------------
flags.DEFINE_string("catalogue", None, "Catalogue directory (see README). Default: the "
                    "built-in demo catalogue, generated into <workdir>/demo_catalogue.")
flags.DEFINE_integer("demo_seed", 0, "Seed of the generated demo catalogue.")
flags.DEFINE_integer("demo_items", 1200, "Number of items of the generated demo catalogue.")
flags.DEFINE_integer("demo_users", 400, "Number of users of the generated demo catalogue.")
flags.DEFINE_string("items_file", "items.csv", "Items file inside the catalogue.")
flags.DEFINE_string("interactions_file", "interactions.csv", "Interactions file.")
flags.DEFINE_string("item_id_column", "item_id", "Item id column of the items file.")
flags.DEFINE_string("image_column", "image", "Image path column (relative to the catalogue).")
flags.DEFINE_string("labels_column", "labels", "Labels column; empty = unlabelled item.")
flags.DEFINE_string("label_separator", "|", "Separator between labels.")
flags.DEFINE_string("user_id_column", "user_id", "User id column of the interactions file.")
flags.DEFINE_string("interaction_item_column", "item_id", "Item id column of interactions.")
flags.DEFINE_string("weight_column", "weight", "Optional weight/rating column.")
flags.DEFINE_string("timestamp_column", "timestamp", "Optional timestamp column.")
flags.DEFINE_integer("min_label_count", 1, "Labels with fewer items are dropped.")
flags.DEFINE_list("ignore_labels", [], "Label values that mean 'no label'.")
flags.DEFINE_enum("unknown_interaction_items", "fail", ["fail", "keep", "drop"],
                  "Interactions on items not in the items file: fail, keep them for "
                  "stage 1 only, or drop them.")

# --- Stage 1: collaborative item embeddings ----------------------------------
flags.DEFINE_string("cf_embeddings", None, "Skip stage 1 and use these item vectors "
                    "(.npz with ids/vectors, or .csv item_id,v0,v1,...).")
flags.DEFINE_integer("cf_dim", 32, "Two-tower embedding dimension.")
flags.DEFINE_integer("cf_epochs", None, "Two-tower epochs (default: the module default).")
flags.DEFINE_float("cf_learning_rate", None, "Two-tower learning rate.")
flags.DEFINE_float("cf_temperature", None, "Two-tower softmax temperature.")
flags.DEFINE_float("cf_holdout", 0.1, "Share of each user's interactions held out for recall@k.")
flags.DEFINE_integer("cf_recall_k", 10, "k of the held-out recall@k report.")
flags.DEFINE_integer("cf_min_interactions", 1, "Items with fewer interactions get no CF vector "
                     "(their CF loss is masked).")
flags.DEFINE_float("cf_target_scale", 0.5, "CF targets are centred and scaled to this RMS "
                   "per dimension (keeps the exponential CF loss in range).")

# --- Stage 2: the image model -------------------------------------------------
flags.DEFINE_string("backbone", "efficientnet_b0", "EfficientNet backbone: efficientnet_b0..b7, "
                    "efficientnet_v2_b0..b3, efficientnet_v2_s/m/l, efficientnet_lite0..2 "
                    "(ImageNet weights offline, see README).")
flags.DEFINE_string("weights", "none", "Backbone weights: none, imagenet, or a weights file.")
flags.DEFINE_string("image_size", "64", "Training image size: N or HxW (e.g. 96x64).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("epochs", 30, "Training epochs.")
flags.DEFINE_enum("optimizer", "adamw", ["adamw", "sgd"], "Optimizer.")
flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate (cosine decay).")
flags.DEFINE_float("weight_decay", 1e-5, "Weight decay.")
flags.DEFINE_float("clipnorm", 1.0, "Gradient clipping by global norm (0 = off).")
flags.DEFINE_float("dropout", 0.2, "Dropout before the classification layer.")
flags.DEFINE_float("cf_weight", 2.0, "λ, weight of the CF loss; 0 = the image-only baseline.")
flags.DEFINE_float("label_ratio", 1.0, "Share of training items that keep their labels.")
flags.DEFINE_list("split", ["0.7", "0.1", "0.2"], "Train, validation, test fractions.")
flags.DEFINE_integer("seed", 0, "Seed of the split, label masking and initial weights.")
flags.DEFINE_enum("task", "auto", ["auto", "multi_label", "single_label"],
                  "auto: multi-label when any item has more than one label.")
flags.DEFINE_enum("mixed_precision", "auto", ["auto", "true", "false"],
                  "auto: mixed_float16 when a GPU is present, float32 on CPU.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA (auto: GPU only).")

# --- Output -------------------------------------------------------------------
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<model_name>). Running the "
                    "same command again resumes an interrupted run.")
flags.DEFINE_string("export_dir", "saved_models", "Base directory of SavedModel exports.")
flags.DEFINE_string("model_name", None, "Export name (default: the catalogue's folder name, "
                    "or cfimage_demo).")
flags.DEFINE_boolean("export", True, "Export a SavedModel at the end.")


def log(message):
    print(f"[cfimage] {message}", flush=True)


def parse_image_size(text):
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 32:
        raise app.UsageError(f"--image_size={text!r}: use N or HxW with sides >= 32, e.g. 96x64")
    return tuple(parts)


def check_flags():
    if not 0.0 < FLAGS.label_ratio <= 1.0:
        raise app.UsageError(f"--label_ratio={FLAGS.label_ratio}: must be in (0, 1].")
    if FLAGS.cf_weight < 0:
        raise app.UsageError(f"--cf_weight={FLAGS.cf_weight}: λ must be >= 0.")
    if FLAGS.epochs < 1 or FLAGS.batch_size < 1:
        raise app.UsageError("--epochs and --batch_size must be >= 1.")
    if FLAGS.cf_target_scale <= 0:
        raise app.UsageError("--cf_target_scale must be > 0.")
    try:
        fractions = tuple(float(f) for f in FLAGS.split)
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise app.UsageError(f"--split={','.join(FLAGS.split)}: give three fractions, "
                             "e.g. 0.7,0.1,0.2")
    return parse_image_size(FLAGS.image_size), fractions


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    image_size, fractions = check_flags()
    started = time.time()

    # --- Set-up: workdir, precision, seeds -------------------------------------
    import keras
    import numpy as np
    import tensorflow as tf

    from cfimage import catalogue as catalogue_lib
    from cfimage import cf_embeddings, data, demo, export, losses, model as model_lib
    from cfimage.callbacks import SelectByValidationMAP, StopOnNonFiniteLoss
    from cfimage.metrics import evaluate_scores

    model_name = FLAGS.model_name or (
        os.path.basename(os.path.normpath(FLAGS.catalogue)) if FLAGS.catalogue
        else "cfimage_demo")
    workdir = os.path.abspath(FLAGS.workdir or os.path.join("runs", model_name))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "flags.txt"), "w") as f:
        f.write(FLAGS.flags_into_string())
    log(f"workdir {workdir}")

    gpus = tf.config.list_physical_devices("GPU")
    mixed = FLAGS.mixed_precision == "true" or (FLAGS.mixed_precision == "auto" and gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    jit = FLAGS.jit_compile == "true" or (FLAGS.jit_compile == "auto" and bool(gpus))
    log(f"devices: {len(gpus)} GPU(s); precision {'mixed_float16' if mixed else 'float32'}; "
        f"XLA {'on' if jit else 'off'}")

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
        catalogue = catalogue_lib.load_catalogue(root, spec)
    except catalogue_lib.CatalogueError as error:
        raise app.UsageError(str(error))
    log(catalogue_lib.describe(catalogue))
    for note in catalogue.notes:
        log(note)
    multi_label = catalogue.multi_label if FLAGS.task == "auto" else FLAGS.task == "multi_label"

    # --- Stage 1: collaborative item embeddings --------------------------------
    cf_path = os.path.join(workdir, "cf_embeddings.npz")
    cf_state = os.path.join(workdir, "cf_stage1.json")
    stage1_config = cf_embeddings.TwoTowerConfig(
        embedding_dim=FLAGS.cf_dim, holdout_fraction=FLAGS.cf_holdout,
        recall_k=FLAGS.cf_recall_k, min_interactions=FLAGS.cf_min_interactions,
        seed=FLAGS.seed)
    for field, value in [("epochs", FLAGS.cf_epochs), ("learning_rate", FLAGS.cf_learning_rate),
                         ("temperature", FLAGS.cf_temperature)]:
        if value is not None:
            setattr(stage1_config, field, value)
    stage1_key = {"config": repr(stage1_config), "catalogue": catalogue.root,
                  "source": FLAGS.cf_embeddings}
    stage1_metrics = {}
    if FLAGS.cf_embeddings:
        log(f"stage 1 skipped: CF vectors from {FLAGS.cf_embeddings}")
        try:
            ids, vectors = cf_embeddings.load_embeddings(FLAGS.cf_embeddings)
            vectors, has_vector = cf_embeddings.align_embeddings(
                catalogue.item_ids, ids, vectors, FLAGS.cf_embeddings, log=log)
        except ValueError as error:
            raise app.UsageError(str(error))
    elif os.path.isfile(cf_state) and json.load(open(cf_state)).get("key") == stage1_key:
        log(f"stage 1 already done in this workdir: reusing {cf_path}")
        stage1_metrics = json.load(open(cf_state))["metrics"]
        ids, vectors = cf_embeddings.load_embeddings(cf_path)
        vectors, has_vector = cf_embeddings.align_embeddings(catalogue.item_ids, ids, vectors,
                                                             cf_path, log=log)
    else:
        log(f"stage 1: two-tower retrieval model (TFRS) on {len(catalogue.interactions)} "
            "interactions")
        result = cf_embeddings.train_two_tower(
            catalogue.interactions, catalogue.item_ids, stage1_config, log=log,
            tensorboard_dir=os.path.join(workdir, "tensorboard", "stage1"))
        vectors, has_vector, stage1_metrics = result.vectors, result.has_vector, result.metrics
        cf_embeddings.save_embeddings(cf_path, catalogue.item_ids[has_vector],
                                      vectors[has_vector])
        np.savez(os.path.join(workdir, "user_embeddings.npz"), ids=result.user_ids,
                 vectors=result.user_vectors)
        with open(cf_state + ".tmp", "w") as f:
            json.dump({"key": stage1_key, "metrics": stage1_metrics}, f, indent=2)
        os.replace(cf_state + ".tmp", cf_state)
    cf_embeddings.write_projector(
        os.path.join(workdir, "tensorboard", "embeddings"), catalogue.item_ids[has_vector],
        vectors[has_vector],
        [{"item_id": i, "labels": "|".join(n for n, on in zip(catalogue.label_names, row) if on)}
         for i, row in zip(catalogue.item_ids[has_vector], catalogue.labels[has_vector])])
    cf_targets, cf_scaling = data.scale_cf_targets(vectors, has_vector, FLAGS.cf_target_scale)
    log(f"CF targets: {int(has_vector.sum())}/{catalogue.num_items} items have a vector "
        f"(dim {vectors.shape[1]}); the others are masked in the CF loss")

    # --- Split and label masking -----------------------------------------------
    splits = data.split_items(catalogue.num_items, catalogue.labelled, fractions, FLAGS.seed)
    labelled = data.mask_labels(catalogue.labelled, splits["train"], FLAGS.label_ratio,
                                FLAGS.seed)
    log(f"split (seed {FLAGS.seed}): train {len(splits['train'])} "
        f"({int(labelled[splits['train']].sum())} labelled, label_ratio {FLAGS.label_ratio}), "
        f"validation {len(splits['validation'])}, test {len(splits['test'])}")
    targets = data.pack_targets(catalogue.labels, labelled, cf_targets,
                                has_vector.astype(np.float32))

    def dataset(name, training):
        index = splits[name]
        return data.make_dataset(catalogue.image_paths[index],
                                 {k: v[index] for k, v in targets.items()}, image_size,
                                 FLAGS.batch_size, training=training, seed=FLAGS.seed)

    train_ds, val_ds, test_ds = (dataset("train", True), dataset("validation", False),
                                 dataset("test", False))

    # --- Stage 2: the multitask image model ------------------------------------
    keras.utils.set_random_seed(FLAGS.seed)  # same initial weights for every arm of a seed
    try:
        model = model_lib.build_model(FLAGS.backbone, FLAGS.weights, image_size,
                                      catalogue.num_classes, multi_label, vectors.shape[1],
                                      dropout=FLAGS.dropout)
    except (ValueError, ImportError, FileNotFoundError, RuntimeError) as error:
        raise app.UsageError(str(error))
    log(f"model {model.name}: {model.count_params():,} parameters, image size {image_size}")
    steps_per_epoch = -(-len(splits["train"]) // FLAGS.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        FLAGS.learning_rate, decay_steps=FLAGS.epochs * steps_per_epoch, alpha=0.01)
    clip = {"global_clipnorm": FLAGS.clipnorm} if FLAGS.clipnorm > 0 else {}
    if FLAGS.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=FLAGS.weight_decay, **clip)
    else:
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9,
                                         weight_decay=FLAGS.weight_decay, **clip)
    label_loss = (losses.MaskedWeightedBCE(losses.positive_weights(
        catalogue.labels[splits["train"]], labelled[splits["train"]]))
        if multi_label else losses.MaskedCrossEntropy())
    model.compile(
        optimizer=optimizer,
        loss={"labels": label_loss, "cf": losses.CFReconstructionLoss()},
        loss_weights={"labels": 1.0, "cf": FLAGS.cf_weight},
        metrics={"cf": [losses.CFError("mse", name="mse"), losses.CFError("l1", name="l1")]},
        jit_compile=jit)

    checkpoint_dir = os.path.join(workdir, "checkpoints")
    backup_dir = os.path.join(workdir, "backup")
    best_path = os.path.join(checkpoint_dir, "best.weights.h5")
    os.makedirs(checkpoint_dir, exist_ok=True)
    if not os.path.isdir(backup_dir):  # a fresh run: forget the best of an earlier run
        for stale in (best_path, best_path.replace(".weights.h5", ".json")):
            if os.path.exists(stale):
                os.remove(stale)
    else:
        log(f"resuming stage 2 from {backup_dir}")
    nan_guard = StopOnNonFiniteLoss()
    callbacks = [
        SelectByValidationMAP(val_ds, catalogue.labels[splits["validation"]],
                              catalogue.label_names, best_path, log=log),
        nan_guard,
        keras.callbacks.BackupAndRestore(backup_dir),
        keras.callbacks.CSVLogger(os.path.join(workdir, "history.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard"), update_freq="epoch"),
    ]
    log(f"stage 2: {FLAGS.epochs} epochs of {steps_per_epoch} steps, λ = {FLAGS.cf_weight} "
        "(the first step traces the graph and takes a while)")
    model.fit(train_ds, validation_data=val_ds, epochs=FLAGS.epochs, callbacks=callbacks,
              verbose=1 if sys.stdout.isatty() else 2)
    if nan_guard.failed_at:
        step, value = nan_guard.failed_at
        raise RuntimeError(f"stage 2: loss became {value} at step {step}; stopped. The best "
                           f"checkpoint so far is intact at {best_path}. Try a lower "
                           "--learning_rate, --clipnorm or --cf_weight.")

    # --- Evaluation: test split, once, at the checkpoint chosen on validation --
    model.load_weights(best_path)
    best = json.load(open(best_path.replace(".weights.h5", ".json")))
    test_scores = model.predict(test_ds, verbose=0)["labels"]
    test = evaluate_scores(catalogue.labels[splits["test"]], test_scores, catalogue.label_names)
    metrics = {"test": test, "best_epoch": best["epoch"], "validation_map": best["val_map"],
               "stage1": stage1_metrics, "cf_scaling": cf_scaling,
               "train_seconds": round(time.time() - started, 1),
               "num_items": {k: int(len(v)) for k, v in splits.items()}}
    with open(os.path.join(workdir, "metrics.json.tmp"), "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(os.path.join(workdir, "metrics.json.tmp"), os.path.join(workdir, "metrics.json"))
    log(f"test (checkpoint of epoch {best['epoch']}, chosen on validation mAP "
        f"{best['val_map']:.4f}): macro mAP {test['macro_map']:.4f}, "
        f"precision@1 {test['precision_at_1']:.4f} on {test['num_items']} items")
    for name, ap in sorted(test["per_class_ap"].items(), key=lambda kv: -kv[1]):
        log(f"  AP {name:<24s} {ap:.4f}")

    # --- Export: SavedModel for TF Serving ---------------------------------------
    if FLAGS.export:
        path = export.export_saved_model(
            model, catalogue.label_names, image_size, FLAGS.export_dir, model_name,
            metadata={"backbone": FLAGS.backbone, "multi_label": multi_label,
                      "test_macro_map": test["macro_map"], "workdir": workdir})
        log(f"exported SavedModel to {path} (serving_default: images -> scores, label_names)")
    log(f"done in {time.time() - started:.0f} s")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
