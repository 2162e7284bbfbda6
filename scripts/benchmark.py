r"""Measures the speed of every part of a cfimage run, in one process, and prints one table.

    python scripts/benchmark.py --out=benchmark.json              # ~4 min on 2 CPU cores
    python scripts/benchmark.py --catalogue=/data/my_shop --image_size=224 --batch_size=64
    scripts/benchmark_gpu.sh                                      # GPU: 224 px, fp16/XLA arms

(from the repository root with cfimage installed). Without --catalogue a demo catalogue is
generated (--demo_items items, 64 px PNGs). What is measured, each after a warm-up:

  input pipeline   data.make_dataset(training=True), one full epoch without the model:
                   uncached (every image decoded and resized again) vs cached (uint8 in RAM)
  input wait       share of a training step spent waiting for the next batch: a loop of
                   model.train_on_batch, timing next(iterator) apart from the step
  training         model.fit images/s of the real model and losses (cfimage/stage2/fit.py),
                   image-only (λ = 0) vs multitask (λ = 2), and their ratio; --rounds
                   alternating rounds of --steps steps, the best round of each counts
  two-tower        memory.train_two_tower on the catalogue's interactions (no holdout):
                   interactions x epochs / seconds of the fit (tracing included);
                   scripts/benchmark_stage1.py compares stage 1 with a bare TFRS loop
  inference        the exported SavedModel's serving_default signature (encoded image bytes
                   in, decode/resize in the graph), loaded with tf.saved_model.load
  GPU only         training images/s, float32 vs mixed_float16, XLA off vs on

Backbone weights are random (speed does not depend on them); CF targets are random.
"""

import json
import os
import platform
import tempfile
import time

import cfimage  # noqa: F401  (sets the environment before TensorFlow is imported)
import keras
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from cfimage.catalogue import reader as catalogue_lib
from cfimage.stage1 import memory, two_tower
from cfimage.stage2 import data
from cfimage.catalogue import demo
from cfimage.serving import export
from cfimage.stage2 import fit
from cfimage.stage2 import losses
from cfimage.stage2 import model as model_lib
from cfimage.stage2.callbacks import StepTimer

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "efficientnet_b0", "Backbone (as train.py's --backbone).")
flags.DEFINE_integer("image_size", 64, "Square training image size.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("steps", 20, "Timed training steps / inference batches per measurement.")
flags.DEFINE_string("catalogue", None, "Catalogue directory (default: a generated demo).")
flags.DEFINE_integer("demo_items", 1200, "Items of the generated demo catalogue.")
flags.DEFINE_integer("rounds", 3, "Training: alternating timed rounds per arm; the best counts.")
flags.DEFINE_integer("cf_dim", 32, "Dimension of the (random) CF targets.")
flags.DEFINE_integer("cf_epochs", 3, "Two-tower epochs.")
flags.DEFINE_string("out", None, "Also write the results as JSON to this path.")

CF_WEIGHT = 2.0


def epoch_images_per_second(dataset):
    start, count = time.perf_counter(), 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def fit_images_per_second(model, dataset, steps, batch_size, warmup=3):
    """model.fit for warmup + steps steps; images/s over the steps after the warm-up."""
    timer = StepTimer()
    model.fit(dataset.repeat(), steps_per_epoch=warmup + steps, epochs=1, verbose=0,
              callbacks=[timer])
    return steps * batch_size / (timer.ends[-1] - timer.ends[warmup - 1])


def input_wait_share(model, dataset, steps, warmup=3):
    """Share of (wait for batch + train step) spent waiting, over `steps` steps."""
    iterator = iter(dataset.repeat())
    waiting = total = 0.0
    for step in range(warmup + steps):
        start = time.perf_counter()
        images, targets = next(iterator)
        got = time.perf_counter()
        model.train_on_batch(images, targets)  # returns numbers: the step has finished
        if step >= warmup:
            waiting += got - start
            total += time.perf_counter() - start
    return waiting / total


def build(catalogue, image_size, multi_label, label_loss, cf_weight, jit):
    keras.utils.set_random_seed(0)
    model = model_lib.build_model(FLAGS.backbone, "none", image_size, catalogue.num_classes,
                                  multi_label, FLAGS.cf_dim)
    optimizer = fit.make_optimizer("adamw", 1e-3, 1e-5, 1.0, 1000)
    fit.compile_model(model, optimizer, label_loss, "multitask", 1.0, cf_weight, jit)
    return model


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # keep TensorFlow's INFO lines out of the table
    started = time.time()
    image_size = (FLAGS.image_size, FLAGS.image_size)
    workdir = tempfile.mkdtemp(prefix="cfimage_benchmark_")
    root = FLAGS.catalogue or demo.make_demo_catalogue(
        os.path.join(workdir, "catalogue"), seed=0, num_items=FLAGS.demo_items)
    catalogue = catalogue_lib.load_catalogue(root)
    multi_label = catalogue.multi_label
    rng = np.random.default_rng(0)
    cf_targets = rng.normal(0.0, 0.5, (catalogue.num_items, FLAGS.cf_dim)).astype(np.float32)
    targets = data.pack_targets(catalogue.labels, catalogue.labelled, cf_targets,
                                np.ones(catalogue.num_items, np.float32))
    label_loss = (losses.MaskedWeightedBCE(losses.positive_weights(catalogue.labels,
                                                                   catalogue.labelled))
                  if multi_label else losses.MaskedCrossEntropy())
    gpus = tf.config.list_physical_devices("GPU")
    batch = FLAGS.batch_size
    results = {"backbone": FLAGS.backbone, "image_size": FLAGS.image_size, "batch_size": batch,
               "steps": FLAGS.steps, "num_items": catalogue.num_items,
               "catalogue": FLAGS.catalogue or f"generated demo ({FLAGS.demo_items} items)",
               "tensorflow": tf.__version__, "keras": keras.__version__,
               "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s), {len(gpus)} GPU(s)",
               "date": time.strftime("%Y-%m-%d"),
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    rows = []

    def row(name, value, unit, key):
        results[key] = round(float(value), 4)
        rows.append((name, value, unit))
        print(f"  measured {name}: {value:.3g} {unit}", flush=True)

    def pipeline(cache):
        return data.make_dataset(catalogue.image_paths, targets, image_size, batch,
                                 training=True, cache=cache)

    # --- Input pipeline: one epoch, uncached vs cached ----------------------------------------
    uncached = pipeline(cache=False)
    epoch_images_per_second(uncached)  # warm-up: file system cache, tf.data threads
    row("input pipeline, uncached (decode every epoch)", epoch_images_per_second(uncached),
        "img/s", "input_uncached_images_per_second")
    cached = pipeline(cache=True)
    epoch_images_per_second(cached)  # fills the cache
    row("input pipeline, cached (uint8 in RAM)", epoch_images_per_second(cached), "img/s",
        "input_cached_images_per_second")

    # --- Training: image-only vs multitask; input wait ----------------------------------------
    jit = bool(gpus)
    # Alternating rounds, best of each: other processes on the machine only slow rounds down.
    image_only = build(catalogue, image_size, multi_label, label_loss, 0.0, jit)
    model = build(catalogue, image_size, multi_label, label_loss, CF_WEIGHT, jit)
    image_only_speed = multitask_speed = 0.0
    for _ in range(FLAGS.rounds):
        image_only_speed = max(image_only_speed,
                               fit_images_per_second(image_only, cached, FLAGS.steps, batch))
        multitask_speed = max(multitask_speed,
                              fit_images_per_second(model, cached, FLAGS.steps, batch))
    del image_only
    row("training, image-only (λ = 0)", image_only_speed, "img/s",
        "train_image_only_images_per_second")
    row(f"training, multitask (λ = {CF_WEIGHT:g})", multitask_speed, "img/s",
        "train_multitask_images_per_second")
    row("training, multitask / image-only", multitask_speed / image_only_speed, "ratio",
        "train_multitask_over_image_only")
    row("input wait share of a step, cached", 100 * input_wait_share(model, cached, FLAGS.steps),
        "%", "input_wait_percent_cached")
    row("input wait share of a step, uncached",
        100 * input_wait_share(model, uncached, FLAGS.steps), "%", "input_wait_percent_uncached")

    # --- Inference through the exported serving signature -------------------------------------
    path = export.export_saved_model(model, catalogue.label_names, image_size,
                                     os.path.join(workdir, "saved"), "benchmark",
                                     log=lambda message: None)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    encoded = [tf.io.read_file(p).numpy() for p in catalogue.image_paths[:batch]]
    encoded = tf.constant((encoded * (batch // len(encoded) + 1))[:batch])
    for _ in range(3):
        serve(images=encoded)["scores"].numpy()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        serve(images=encoded)["scores"].numpy()
    row("inference, SavedModel serving_default (bytes in)",
        FLAGS.steps * batch / (time.perf_counter() - start), "img/s",
        "serving_images_per_second")
    del model, serve

    # --- GPU only: float32 vs mixed precision, XLA off vs on ----------------------------------
    if gpus:
        for policy in ("float32", "mixed_float16"):
            for xla in (False, True):
                keras.mixed_precision.set_global_policy(policy)
                variant = build(catalogue, image_size, multi_label, label_loss, CF_WEIGHT, xla)
                row(f"training, {policy}, XLA {'on' if xla else 'off'}",
                    fit_images_per_second(variant, cached, FLAGS.steps, batch), "img/s",
                    f"train_{policy}_xla_{'on' if xla else 'off'}_images_per_second")
                del variant
        keras.mixed_precision.set_global_policy("float32")
    else:
        results["gpu_note"] = "no GPU: float32 vs mixed precision and XLA off vs on skipped"

    # --- Stage 1: the two-tower model ----------------------------------------------------------
    config = two_tower.TwoTowerConfig(embedding_dim=FLAGS.cf_dim, epochs=FLAGS.cf_epochs,
                                      holdout_fraction=0.0, svd_baseline=False)
    result = memory.train_two_tower(catalogue.interactions, catalogue.item_ids, config,
                                    log=lambda message: None)
    n = len(catalogue.interactions)
    row(f"two-tower training ({n:,} interactions x {FLAGS.cf_epochs} epochs)",
        n * FLAGS.cf_epochs / result.metrics["full_fit_seconds"], "interactions/s",
        "two_tower_interactions_per_second")

    results["seconds"] = round(time.time() - started, 1)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\n{FLAGS.backbone}, {FLAGS.image_size} px, batch {batch}, {FLAGS.steps} timed steps; "
          f"{results['catalogue']}; {results['machine']}; TF {tf.__version__}")
    width = max(len(name) for name, _, _ in rows)
    print(f"| {'measurement':<{width}} | {'value':>9} | unit           |")
    print(f"|{'-' * (width + 2)}|{'-' * 10}:|----------------|")
    for name, value, unit in rows:
        digits = {"ratio": 3, "%": 2}.get(unit, 1)
        print(f"| {name:<{width}} | {value:>9.{digits}f} | {unit:<14} |")
    if not gpus:
        print(f"({results['gpu_note']})")
    print(f"total {results['seconds']:.0f} s; load average (1, 5, 15 min) at start "
          f"{results['load_average_at_start']}, at end {results['load_average_at_end']}")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
