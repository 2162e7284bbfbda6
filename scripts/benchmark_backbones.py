"""Measures training and inference throughput of EfficientNet-Lite0 vs Keras' EfficientNetB0.

    python scripts/benchmark_backbones.py [--image_size=128] [--out=benchmark.json]

(from the repository root with cfimage installed, or with PYTHONPATH=.).

Runtime: about 2.5 minutes with the defaults on 2 CPU cores. Both backbones get random weights
(speed does not depend on them), a 10-class dense head, Adam and sparse cross-entropy, and
random images in [0, 255]. Each model first runs --warmup_steps training steps and one predict
call (tracing). Then --rounds rounds alternate between the models: training img/s is timed over
--train_steps steps of `model.fit`, inference img/s over --predict_batches batches of
`model.predict`; the best round counts (other processes on the machine only slow rounds down).
"""

import json
import platform
import time

import cfimage  # noqa: F401  (sets the environment before TensorFlow is imported)
import keras
import numpy as np
from absl import app, flags

from cfimage.stage2.callbacks import StepTimer
from cfimage.stage2.lite import efficientnet_lite

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 128, "Square input size of both backbones.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("warmup_steps", 3, "Training steps run before timing (tracing, caches).")
flags.DEFINE_integer("train_steps", 20, "Timed training steps.")
flags.DEFINE_integer("predict_batches", 20, "Timed inference batches.")
flags.DEFINE_integer("rounds", 3, "Timed rounds per model, alternating; the best is kept.")
flags.DEFINE_string("out", None, "If set, also write the results as JSON to this path.")

NUM_CLASSES = 10


def _backbones(image_size):
    shape = (image_size, image_size, 3)
    return {
        "efficientnet_lite0": lambda: efficientnet_lite("efficientnet_lite0", input_shape=shape),
        "EfficientNetB0": lambda: keras.applications.EfficientNetB0(
            include_top=False, weights=None, input_shape=shape, pooling="avg"),
    }


def _compiled(make_backbone):
    backbone = make_backbone()
    outputs = keras.layers.Dense(NUM_CLASSES, name="head")(backbone.output)
    model = keras.Model(backbone.input, outputs, name=backbone.name)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _train_img_per_s(model, images, labels, steps):
    """Fits 1 + `steps` batches; times the last `steps` (the first pays for iterator setup)."""
    batch, timer = FLAGS.batch_size, StepTimer()
    count = (1 + steps) * batch
    model.fit(images[:count], labels[:count], batch_size=batch, epochs=1, shuffle=False,
              verbose=0, callbacks=[timer])
    return steps * batch / (timer.ends[-1] - timer.ends[0])


def _infer_img_per_s(model, images):
    start = time.perf_counter()
    model.predict(images, batch_size=FLAGS.batch_size, verbose=0)
    return len(images) / (time.perf_counter() - start)


def main(argv):
    del argv
    if FLAGS.warmup_steps < 1:
        raise app.UsageError("--warmup_steps must be >= 1 (the first step traces the graph).")
    # Data: random images and labels, enough for the longest phase.
    rng = np.random.default_rng(0)
    count = FLAGS.batch_size * max(1 + FLAGS.warmup_steps, 1 + FLAGS.train_steps,
                                   FLAGS.predict_batches)
    size = FLAGS.image_size
    images = rng.uniform(0, 255, size=(count, size, size, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=count)

    # Warm up every model (tracing, caches), then alternate timed rounds between them so that
    # a load spike from another process hits both; keep each model's best round.
    models = {name: _compiled(make) for name, make in _backbones(size).items()}
    for model in models.values():
        _train_img_per_s(model, images, labels, FLAGS.warmup_steps)
        model.predict(images[:FLAGS.batch_size], batch_size=FLAGS.batch_size, verbose=0)
    results = {name: {"params": model.count_params() - model.get_layer("head").count_params(),
                      "train_img_per_s": 0.0, "infer_img_per_s": 0.0}
               for name, model in models.items()}
    predict_images = images[:FLAGS.predict_batches * FLAGS.batch_size]
    for _ in range(FLAGS.rounds):
        for name, model in models.items():
            row = results[name]
            row["train_img_per_s"] = max(row["train_img_per_s"], _train_img_per_s(
                model, images, labels, FLAGS.train_steps))
            row["infer_img_per_s"] = max(row["infer_img_per_s"],
                                         _infer_img_per_s(model, predict_images))

    # Report.
    print(f"\nimage {size}x{size}, batch {FLAGS.batch_size}, best of {FLAGS.rounds} rounds of "
          f"{FLAGS.train_steps} train steps / {FLAGS.predict_batches} predict batches after "
          f"warm-up; {platform.processor() or platform.machine()}, "
          f"backend {keras.backend.backend()}")
    print(f"| {'backbone':<20} | {'params':>10} | {'train img/s':>11} | {'infer img/s':>11} |")
    print(f"|{'-' * 22}|{'-' * 11}:|{'-' * 12}:|{'-' * 12}:|")
    for name, row in results.items():
        print(f"| {name:<20} | {row['params']:>10,} | {row['train_img_per_s']:>11.1f} "
              f"| {row['infer_img_per_s']:>11.1f} |")
    if FLAGS.out:
        settings = {key: getattr(FLAGS, key) for key in
                    ("image_size", "batch_size", "warmup_steps", "train_steps", "predict_batches",
                     "rounds")}
        with open(FLAGS.out, "w") as stream:
            json.dump({"settings": settings, "results": results}, stream, indent=2)
        print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
