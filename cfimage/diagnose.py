r"""Does the interaction log help this catalogue's image classifier? A report in minutes.

    python -m cfimage.diagnose                            # built-in demo catalogue
    python -m cfimage.diagnose --catalogue=DIR --backbone=efficientnet_lite0 \
        --weights=imagenet --image_size=224x160

Takes the catalogue and stage-1 flags of `cfimage.train` (cfimage/train_flags.py) and the same
--workdir, so a finished stage 1 there is reused. Sections of main(): set-up -> catalogue ->
stage 1 (CF vectors, interactions per item) -> backbone features (cached) -> probes over
--splits random item splits at each --label_ratios -> report (<workdir>/diagnose.md + plots).
docs/diagnose.md explains the numbers and the verdict.
"""

import os
import sys
import time

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app
from absl import flags

from cfimage import train_flags
from cfimage import workdir as workdir_lib
from cfimage.errors import UserError

FLAGS = flags.FLAGS
train_flags.define_flags()  # the catalogue, stage-1 and backbone flags of cfimage.train
flags.DEFINE_integer("splits", 20, "Random 70/10/20 item splits (--split fractions) the probes "
                     "are averaged over; split i uses seed --seed + i.", lower_bound=2)
flags.DEFINE_list("label_ratios", ["0.1", "0.3", "1.0"], "Shares of the training items that "
                  "keep their labels, each measured on every split.")
flags.DEFINE_list("views", ["plain", "flip"], "Image views whose backbone features are "
                  "averaged: plain, flip (mirrored), or both (flip-averaged).")
flags.DEFINE_integer("interaction_bins", 4, "Quantile bins of interactions per item (items "
                     "without interactions get their own).", lower_bound=1)
flags.DEFINE_integer("probe_steps", 300, "Most full-batch Adam steps of a label probe "
                     "(early-stopped on validation mAP).", lower_bound=10)
flags.DEFINE_integer("probe_threads", 1, "BLAS threads of the probes (small matrices: more "
                     "threads mostly contend on a shared CPU).", lower_bound=1)


def log(message):
    print(f"[diagnose] {message}", flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    started = time.time()

    # --- Set-up: workdir, flags -------------------------------------------------------
    from cfimage import atomic
    model_name = FLAGS.model_name or (os.path.basename(os.path.normpath(FLAGS.catalogue))
                                      if FLAGS.catalogue else "cfimage_demo")
    workdir = os.path.abspath(FLAGS.workdir or os.path.join("runs", model_name))
    workdir_lib.claim(workdir, log=log)  # usable, and not in use by a train or diagnose run
    # Written before TensorFlow loads: modules it imports define flags of their own, which a
    # --flagfile of this file would name before they exist.
    atomic.write_text(os.path.join(workdir, "diagnose_flags.txt"), train_flags.flagfile_text())
    image_size, fractions, label_ratios = _check_flags()
    import tensorflow as tf
    from threadpoolctl import threadpool_limits

    from cfimage.catalogue import demo, reader
    from cfimage.experiments import diagnose_report, diagnose_runs, probes
    from cfimage.stage1 import pipeline
    from cfimage.stage2 import features

    log(f"workdir {workdir}")
    if FLAGS.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)

    # --- Catalogue ----------------------------------------------------------------
    root = FLAGS.catalogue
    if root is None:
        root = os.path.join(workdir, "demo_catalogue")
        log(f"no --catalogue: generating the demo catalogue (synthetic) in {root}")
        demo.make_demo_catalogue(root, seed=FLAGS.demo_seed, num_items=FLAGS.demo_items,
                                 num_users=FLAGS.demo_users, kind=FLAGS.demo_kind)
    from cfimage import config  # loads TensorFlow: after the flags file is written
    run_config = config.from_flags(FLAGS)  # the same settings as cfimage.train
    spec = run_config.catalogue.spec
    stream, stream_why = pipeline.should_stream(FLAGS.stream_interactions, root,
                                                FLAGS.interactions_file)
    catalogue = reader.load_catalogue(root, spec, interactions=not stream)
    listed_ids = catalogue.item_ids
    from cfimage.catalogue import images  # loads TensorFlow, as the config did
    cache = os.path.abspath(FLAGS.feature_cache or os.path.join(workdir, "features"))
    catalogue = images.drop_unreadable_images(catalogue, spec, FLAGS.on_bad_image, workdir, log,
                                              check_cache=cache)
    log(reader.describe(catalogue))
    multi_label = catalogue.is_multi_label(FLAGS.task)

    # --- Stage 1: CF vectors (reused from the workdir when done) and interaction counts -
    stage1_config, stream_config = run_config.stage1.two_tower, run_config.stage1.stream
    stage1 = pipeline.run_stage1(
        catalogue, spec, listed_ids, stage1_config, stream_config, workdir, workdir,
        cf_embeddings=FLAGS.cf_embeddings, streaming=stream,
        stream_why=f"{stream_why}; --stream_interactions={FLAGS.stream_interactions}", log=log)
    counts = pipeline.interactions_per_item(catalogue, stage1, spec, listed_ids, stage1_config,
                                            stream_config, log=log)
    bins, bin_names = diagnose_runs.interaction_bins(counts, FLAGS.interaction_bins)
    log(f"CF vectors for {int(stage1.has_vector.sum())}/{catalogue.num_items} items; "
        f"interaction bins: {', '.join(bin_names)}")

    # --- Backbone features, cached ----------------------------------------------------
    if FLAGS.weights in ("none", None):
        log("note: --weights=none probes a randomly initialised backbone; pass "
            "--weights=imagenet (or a weights file) to probe the features a user starts from")
    try:
        extracted = features.features(cache, catalogue.image_paths, FLAGS.backbone,
                                      FLAGS.weights, image_size, views=FLAGS.views,
                                      batch_size=FLAGS.batch_size, log=log)
    except (ValueError, ImportError, RuntimeError) as error:  # backbone, weights, views
        raise UserError(f"backbone features: {error}") from None
    feature_seconds = time.time() - started

    # --- Probes over the splits ---------------------------------------------------------
    inputs = diagnose_runs.DiagnoseInputs(
        image_features=extracted.features, vectors=stage1.vectors,
        has_vector=stage1.has_vector, labels=catalogue.labels, labelled=catalogue.labelled,
        label_names=catalogue.label_names, multi_label=multi_label, bins=bins,
        bin_names=bin_names)
    settings = probes.ProbeSettings(max_steps=FLAGS.probe_steps)
    log(f"probes: {FLAGS.splits} splits x label ratios {', '.join(map(str, label_ratios))}")
    try:
        with threadpool_limits(FLAGS.probe_threads):
            maps, r2 = diagnose_runs.run_splits(inputs, FLAGS.splits, label_ratios, fractions,
                                                FLAGS.seed, settings, log=log)
    except ValueError as error:  # too few labelled items for the split
        raise UserError(f"--split={','.join(FLAGS.split)}: {error}") from None

    # --- Report -------------------------------------------------------------------------
    header = _header(catalogue, root, stage1, extracted, multi_label, image_size, label_ratios,
                     feature_seconds, time.time() - started)
    verdict = diagnose_report.write_report(workdir, header, maps, r2, log=log)
    log(f"verdict: {verdict}; done in {time.time() - started:.0f} s "
        f"(features {feature_seconds:.0f} s)")


def _check_flags():
    """(image size, split fractions, label ratios) from the flags, or a UserError."""
    try:
        size = [int(p) for p in FLAGS.image_size.lower().split("x")]
    except ValueError:
        size = []
    size = size * 2 if len(size) == 1 else size
    if len(size) != 2 or min(size) < 32:
        raise UserError(f"--image_size={FLAGS.image_size!r}: use N or HxW with sides >= 32, "
                        "e.g. 224x160")
    try:
        fractions = tuple(float(f) for f in FLAGS.split)
        ratios = sorted({float(r) for r in FLAGS.label_ratios})
    except ValueError as error:
        raise UserError(f"--split / --label_ratios: {error}") from None
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"--split={','.join(FLAGS.split)}: train, validation and test "
                        "fractions must each be > 0 and sum to 1, e.g. 0.7,0.1,0.2")
    if not ratios or min(ratios) <= 0 or max(ratios) > 1:
        raise UserError(f"--label_ratios={','.join(FLAGS.label_ratios)}: each must be in "
                        "(0, 1], e.g. 0.1,0.3,1.0")
    from cfimage.stage2 import features
    from cfimage.stage2 import model as model_lib  # Keras: loaded once the flags are read
    try:  # before any work: an unknown backbone, a missing weights file, an unknown view
        if FLAGS.backbone not in model_lib.BACKBONES:
            raise ValueError(f"--backbone={FLAGS.backbone}: unknown; choose one of "
                             f"{', '.join(sorted(model_lib.BACKBONES))}")
        model_lib.check_weights(FLAGS.weights)
        for view in FLAGS.views:
            features.settings_key(FLAGS.backbone, FLAGS.weights, size, view)
    except ValueError as error:
        raise UserError(str(error)) from None
    return tuple(size), fractions, ratios


def _header(catalogue, root, stage1, extracted, multi_label, image_size, label_ratios,
            feature_seconds, seconds):
    shown = " ".join(a for a in sys.argv[1:] if not a.startswith("--flagfile")) or "(defaults)"
    task = "multi-label" if multi_label else "single-label"
    return [
        "# Does the interaction log help this catalogue's classifier?", "",
        f"`python -m cfimage.diagnose {shown}`", "",
        f"* Catalogue: `{root}`: {catalogue.num_items} items, {int(catalogue.labelled.sum())} "
        f"labelled, {catalogue.num_classes} classes ({task}); "
        f"{int(stage1.has_vector.sum())} items have a CF vector ({stage1.source}).",
        f"* Image features: {FLAGS.backbone}, weights {FLAGS.weights}, "
        f"{image_size[0]}x{image_size[1]} px, views {'+'.join(FLAGS.views)} averaged "
        f"({extracted.features.shape[1]} dims; {extracted.computed} image-views computed, "
        f"{extracted.reused} read from the cache).",
        f"* Protocol: {FLAGS.splits} random item splits {'/'.join(FLAGS.split)} (seeds "
        f"{FLAGS.seed}..{FLAGS.seed + FLAGS.splits - 1}) x label ratios "
        f"{', '.join(f'{r:g}' for r in label_ratios)}; linear probes chosen on validation "
        "mAP; test macro mAP.",
        f"* Runtime: {seconds:.0f} s in all, of which {feature_seconds:.0f} s before the "
        "probes (catalogue, stage 1, features).",
    ]


def run():
    train_flags.run_main(main)


if __name__ == "__main__":
    run()
