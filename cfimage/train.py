r"""Trains a collaborative image classifier end to end.

    python -m cfimage.train                              # built-in demo catalogue
    python -m cfimage.train --flagfile=configs/movielens_posters_cpu.cfg

Sections of main(): set-up -> data -> stage 1 (CF item embeddings, TFRS) -> stage 2
(multitask image model, Keras 3) -> evaluation on test -> export. Each is a call into its
package. Everything a run writes lands under --workdir (flags.txt, config.json, checkpoints,
TensorBoard, metrics.json); the export goes to <export_dir>/<model_name>/<version>/. The flags
are in cfimage/train_flags.py, the run config built from them in cfimage/config.py.
"""

import functools
import os
import time

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app

from cfimage import atomic
from cfimage import config as config_lib
from cfimage import train_flags
from cfimage import workdir as workdir_lib
from cfimage.catalogue import demo, images, reader
from cfimage.serving import run_export
from cfimage.stage1 import pipeline
from cfimage.stage2 import data, evaluation, hparams, inputs, trainer
from cfimage.stage2 import runtime as runtime_lib
from cfimage.train_flags import FLAGS, define_flags, flagfile_text, log

define_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_lib.from_flags(FLAGS)  # every check that needs no data, before any work
    catalogue_config, stage1_config, stage2_config = (config.catalogue, config.stage1,
                                                      config.stage2)
    started = time.time()

    # --- Set-up: workdir, threads, precision, strategy ---------------------------
    workdir = config.output.workdir
    workdir_lib.claim(workdir, log=log, multi_worker=stage2_config.strategy == "multi_worker")
    config_lib.write_workdir(config, flagfile_text())
    log(f"workdir {workdir}")
    runtime = runtime_lib.start(stage2_config, workdir, config.output.threads, log=log)

    # --- Data: the catalogue -----------------------------------------------------
    spec, root = catalogue_config.spec, catalogue_config.root
    if root is None:
        root = os.path.join(workdir, "demo_catalogue")
        log(f"no --catalogue: generating the demo catalogue (synthetic) in {root}")
        demo.make_demo_catalogue(root, seed=catalogue_config.demo_seed,
                                 num_items=catalogue_config.demo_items,
                                 num_users=catalogue_config.demo_users,
                                 kind=catalogue_config.demo_kind)
    # A large or sharded log is streamed by stage 1, never loaded into pandas.
    stream, stream_why = pipeline.should_stream(catalogue_config.stream_interactions, root,
                                                spec.interactions_file)
    catalogue = reader.load_catalogue(root, spec, interactions=not stream)
    listed_ids = catalogue.item_ids  # as in items.csv, before unreadable images are dropped
    if not stage2_config.tfrecords:  # TFRecord shards were decoded when they were written
        catalogue = images.drop_unreadable_images(
            catalogue, spec, catalogue_config.on_bad_image, workdir, log,
            check_cache=stage2_config.feature_cache)  # shared by cells on cached features
    log(reader.describe(catalogue))
    for note in catalogue.notes:
        log(note)
    if not config.output.stage1_only:  # one class or too few items: refused before stage 1
        data.check_trainable(catalogue.labels, catalogue.labelled, catalogue.label_names,
                             stage2_config.split, os.path.join(root, spec.items_file))

    # --- Stage 1: collaborative item embeddings ----------------------------------
    stage1 = pipeline.run_stage1(
        catalogue, spec, listed_ids, stage1_config.two_tower, stage1_config.stream, workdir,
        runtime.outdir, cf_embeddings=stage1_config.cf_embeddings, streaming=stream,
        stream_why=f"{stream_why}; --stream_interactions={catalogue_config.stream_interactions}",
        log=log)
    if config.output.stage1_only:
        log(f"--stage1_only: stopping after stage 1 ({stage1.source})")
        return

    # --- Stage 2 inputs: CF targets, split, label masking, datasets ----------------
    count_interactions = functools.cache(lambda: pipeline.interactions_per_item(
        catalogue, stage1, spec, listed_ids, stage1_config.two_tower, stage1_config.stream,
        log=log))  # for sqrt weights and the warm test buckets: counted once
    stage2_inputs = inputs.prepare(
        catalogue, stage1.vectors, stage1.has_vector, stage2_config,
        stage1_config.cf_target_scale, catalogue_config.task, runtime.global_batch, runtime.outdir,
        count_interactions=count_interactions, log=log, cf_target=stage1_config.cf_target,
        load_users=lambda: pipeline.user_vectors(workdir, stage1_config, stage1.vectors.shape[1]))

    # --- Stage 2: the image model (or its heads on cached features), chosen on validation
    cf_dim = stage2_inputs.targets["cf"].shape[1] - 1  # the target's size (pca_whiten: K)
    trained = trainer.train(catalogue, stage2_inputs, cf_dim, stage2_config, runtime, log=log)

    # --- Evaluation: test split, once, at the checkpoint chosen on validation ----
    # Cold view (no CF vector) first; the warm view and its interaction-count buckets after.
    test_rows = stage2_inputs.splits["test"]
    test = evaluation.evaluate_test(trained.model, trained.best, trained.test,
                                    catalogue.labels[test_rows], catalogue.label_names,
                                    has_vector=stage1.has_vector[test_rows],
                                    interaction_counts=count_interactions()[test_rows],
                                    bucket_edges=stage2_config.warm_buckets, log=log)
    atomic.write_json(os.path.join(runtime.outdir, "metrics.json"), {
        "test": test, "best_epoch": trained.best.best_epoch, "validation_map": trained.best.best,
        "arm": stage2_config.arm, "cf_weight": stage2_config.cf_weight,
        "cf_confidence": stage2_config.cf_confidence, "cf_loss": stage2_config.cf_loss,
        "distill_weight": stage2_config.distill_weight,
        "stage1": stage1.metrics,
        "stage2": trained.summary, "cf_scaling": stage2_inputs.cf_scaling,
        "train_seconds": round(time.time() - started, 1),
        "num_items": {k: int(len(v)) for k, v in stage2_inputs.splits.items()}})
    hparams.write(os.path.join(runtime.outdir, "tensorboard"), config, test, trained.best.best)
    if not runtime.chief:
        log(f"done in {time.time() - started:.0f} s (not the chief: the chief exports)")
        return

    # --- Export: SavedModel for TF Serving ---------------------------------------
    if config.output.export:
        run_export.export_run(
            trained.serving_model, catalogue, stage1.vectors, stage1.has_vector,
            stage2_inputs.cf_scaling,
            {"backbone": stage2_config.backbone, "multi_label": stage2_inputs.multi_label,
             "train_backbone": stage2_config.train_backbone, "test_macro_map": test["macro_map"],
             "workdir": workdir}, config, log=log)
    log(f"done in {time.time() - started:.0f} s")


def run():
    train_flags.run_main(main)


if __name__ == "__main__":
    run()
