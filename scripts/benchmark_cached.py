r"""Cached-feature training against end-to-end training, feature extraction, and the exported
signature against a direct Keras call; one process, one table.

    python scripts/benchmark_cached.py --out=benchmark_cached.json     # ~3 min on 2 CPU cores

(from the repository root with cfimage installed). A demo catalogue of --demo_items items is
generated; the CF vectors are random (stage 1 is not measured here) and the backbone weights
are random (--weights=none: speed does not depend on them). What is measured:

  feature extraction  features.per_view on every image, views plain and flip, into an empty
                      cache: image-views per second, backbone build and tracing included
  stage-2 cell        trainer.train + evaluation.evaluate_test, as one cell of an experiment
                      runs them after stage 1, with --epochs epochs: end to end
                      (--train_backbone=true) vs heads on cached features
                      (--train_backbone=false, features already cached); model build and
                      tracing included; cells per hour = 3600 / seconds
  serving             the cached run's export: serving_default on --batch_size encoded images
                      (decode and resize in the graph) vs model.predict_on_batch of the composed
                      Keras model on the same images already decoded; the median of
                      --serving_calls calls of each, after two warm-up calls
"""

import json
import os
import platform
import tempfile
import time

import cfimage  # noqa: F401  (sets the environment before TensorFlow is imported)
import numpy as np
import tensorflow as tf
from absl import app, flags

from cfimage import config as config_lib
from cfimage import train_flags
from cfimage.catalogue import demo, reader
from cfimage.serving import export
from cfimage.stage2 import data, evaluation, features, trainer
from cfimage.stage2 import inputs as inputs_lib
from cfimage.stage2 import runtime as runtime_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("backbone", "efficientnet_lite0", "Backbone (as train.py's --backbone).")
flags.DEFINE_integer("image_size", 128, "Square image size.")
flags.DEFINE_integer("demo_items", 400, "Items of the generated demo catalogue.")
flags.DEFINE_integer("epochs", 2, "Epochs of each stage-2 cell.")
flags.DEFINE_integer("batch_size", 32, "Training and serving batch size.")
flags.DEFINE_integer("serving_calls", 10, "Timed calls of each serving path.")
flags.DEFINE_string("out", None, "Also write the results as JSON to this path.")

CF_DIM = 32


def quiet(_):
    pass


def stage2_cell(root, workdir, extra_flags):
    """Seconds of one stage-2 cell (train + test evaluation), and its Stage2Result."""
    flag_values = flags.FlagValues()
    train_flags.define_flags(flag_values)
    flag_values(["benchmark", f"--catalogue={root}", f"--workdir={workdir}",
                 f"--backbone={FLAGS.backbone}", f"--image_size={FLAGS.image_size}",
                 f"--epochs={FLAGS.epochs}", f"--batch_size={FLAGS.batch_size}",
                 f"--cf_dim={CF_DIM}", *extra_flags])
    config = config_lib.from_flags(flag_values)
    catalogue = reader.load_catalogue(root, config.catalogue.spec)
    runtime = runtime_lib.start(config.stage2, workdir, log=quiet)
    vectors = np.random.default_rng(0).normal(size=(catalogue.num_items, CF_DIM))
    started = time.perf_counter()
    prepared = inputs_lib.prepare(catalogue, vectors, np.ones(catalogue.num_items, bool),
                                  config.stage2, 0.5, "auto", runtime.global_batch,
                                  runtime.outdir, count_interactions=None, log=quiet)
    result = trainer.train(catalogue, prepared, CF_DIM, config.stage2, runtime, log=quiet)
    evaluation.evaluate_test(result.model, result.best, result.test,
                             catalogue.labels[prepared.splits["test"]], catalogue.label_names,
                             log=quiet)
    return time.perf_counter() - started, result, catalogue


def median_seconds(call, calls):
    for _ in range(2):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv):
    del argv
    workdir = tempfile.mkdtemp(prefix="cfimage_bench_cached_")
    size = (FLAGS.image_size, FLAGS.image_size)
    root = demo.make_demo_catalogue(os.path.join(workdir, "catalogue"), seed=0,
                                    num_items=FLAGS.demo_items)
    catalogue = reader.load_catalogue(root)
    cache = os.path.join(workdir, "features")
    results = {"backbone": FLAGS.backbone, "image_size": FLAGS.image_size,
               "num_items": catalogue.num_items, "epochs": FLAGS.epochs,
               "batch_size": FLAGS.batch_size, "machine": platform.machine(),
               "cpus": os.cpu_count(), "tensorflow": tf.__version__,
               "load_average_start": os.getloadavg()}
    rows = []

    def row(name, value, unit, key):
        results[key] = value
        rows.append((name, value, unit))

    # --- Feature extraction into an empty cache ------------------------------------
    start = time.perf_counter()
    extracted = features.per_view(cache, catalogue.image_paths, FLAGS.backbone, "none", size,
                                  ("plain", "flip"), batch_size=FLAGS.batch_size, log=quiet)
    seconds = time.perf_counter() - start
    assert extracted.computed == 2 * catalogue.num_items
    row("feature extraction (plain + flip, tracing included)", extracted.computed / seconds,
        "img/s", "extraction_images_per_second")

    # --- One stage-2 cell each way ------------------------------------------------------
    cached_seconds, cached_run, _ = stage2_cell(
        root, os.path.join(workdir, "cached"), ["--train_backbone=false",
                                                f"--feature_cache={cache}"])
    assert cached_run.summary["features_computed"] == 0
    end_to_end_seconds, _, _ = stage2_cell(root, os.path.join(workdir, "end_to_end"), [])
    row(f"stage-2 cell, end to end ({FLAGS.epochs} epochs)", end_to_end_seconds, "s",
        "cell_seconds_end_to_end")
    row(f"stage-2 cell, cached features ({FLAGS.epochs} epochs)", cached_seconds, "s",
        "cell_seconds_cached")
    row("cells per hour, end to end", 3600 / end_to_end_seconds, "cells/h",
        "cells_per_hour_end_to_end")
    row("cells per hour, cached features", 3600 / cached_seconds, "cells/h",
        "cells_per_hour_cached")
    row("cells per hour, cached / end to end", end_to_end_seconds / cached_seconds, "ratio",
        "cells_per_hour_ratio")

    # --- The export of the cached run vs a direct Keras call ------------------------------
    model = cached_run.serving_model
    path = export.export_saved_model(model, catalogue.label_names, size,
                                     os.path.join(workdir, "saved"), "bench", log=quiet)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    paths = catalogue.image_paths[:FLAGS.batch_size]
    encoded = tf.constant([tf.io.read_file(p).numpy() for p in paths])
    pixels = np.stack([data.decode_and_resize(tf.io.read_file(p), size).numpy()
                       for p in paths]).astype(np.float32)
    np.testing.assert_allclose(serve(images=encoded)["scores"].numpy(),
                               model.predict_on_batch(pixels)["labels"], rtol=1e-3, atol=1e-5)
    serving_seconds = median_seconds(lambda: serve(images=encoded)["scores"].numpy(),
                                     FLAGS.serving_calls)
    keras_seconds = median_seconds(lambda: model.predict_on_batch(pixels),
                                   FLAGS.serving_calls)
    row("serving_default, encoded images in", len(paths) / serving_seconds, "img/s",
        "serving_images_per_second")
    row("Keras predict_on_batch, decoded images in", len(paths) / keras_seconds, "img/s",
        "keras_images_per_second")
    row("serving_default / Keras call", keras_seconds / serving_seconds, "ratio",
        "serving_ratio")
    results["load_average_end"] = os.getloadavg()

    print(f"\n{FLAGS.backbone}, {FLAGS.image_size} px, {catalogue.num_items} items, "
          f"{FLAGS.epochs} epochs, batch {FLAGS.batch_size}")
    print("| measurement | value | unit |\n|---|---:|---|")
    for name, value, unit in rows:
        print(f"| {name} | {value:.3g} | {unit} |")
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
