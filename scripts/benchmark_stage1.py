r"""Stage 1 against a bare TFRS two-tower loop on the same synthetic log, in one process.

    python scripts/benchmark_stage1.py                     # 1M rows, 100k users, 5k items
    python scripts/benchmark_stage1.py --rows=5000000 --users=200000 --epochs=1

(from the repository root with cfimage installed). The log is scripts/synthetic_interactions.py's
(a planted taste per user, ratings 1-5 as weights). Both train the same table sizes (dimension
--dim, batch 1,024, Adagrad lr 0.1, in-batch softmax) for --epochs epochs:

  bare loop   what a TFRS tutorial would write, made as fast as it goes: ids mapped to integer
              rows beforehand (not timed), one permutation up front, the batches pre-cut, two
              Embedding tables, tfrs.tasks.Retrieval; no logQ, no L2, no weights, no
              evaluation, no refit. interactions/s = rows x epochs / model.fit seconds.
  stage 1     cfimage.stage1.memory.train_two_tower with the default TwoTowerConfig (logQ
              correction, accidental hits removed, L2 1e-3, rating weights, held-out fit +
              recall@10 against popularity and SVD, then the full refit), timed end to end from
              the DataFrame (validation, counting, id mapping, both fits, evaluation, reading
              the tables). interactions/s = (held-out fit rows + full fit rows) x epochs /
              those seconds.
  streaming   (--stream) the same through cfimage.stage1.stream from a CSV file (scan included).

The two loops run alternately --rounds times; the best round of each counts (other processes on
the machine only slow a round down). Prints the rates and stage 1 / bare loop, per wall-clock
second and per CPU second of this process (all its threads; less sensitive to other jobs on a
shared machine than the wall clock).
"""

import json
import os
import tempfile
import time

import cfimage  # noqa: F401  (sets the environment before TensorFlow is imported)
import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs
from absl import app, flags

from cfimage.catalogue.reader import CatalogueSpec
from cfimage.stage1 import memory, scan, stream, two_tower
from synthetic_interactions import synthetic_log

FLAGS = flags.FLAGS
flags.DEFINE_integer("rows", 1_000_000, "Interactions.")
flags.DEFINE_integer("users", 100_000, "Users.")
flags.DEFINE_integer("items", 5000, "Items.")
flags.DEFINE_integer("dim", 64, "Embedding dimension (stage 1's default).")
flags.DEFINE_integer("epochs", 2, "Epochs of every fit.")
flags.DEFINE_integer("rounds", 1, "Alternating rounds; the best of each counts.")
flags.DEFINE_bool("stream", False, "Also time the streaming path (writes the log as CSV).")
flags.DEFINE_string("out", None, "Also write the results as JSON to this path.")

BATCH = 1024


class BareTwoTower(tfrs.Model):
    def __init__(self, num_users, num_items, dim):
        super().__init__()
        self.users = tf.keras.layers.Embedding(num_users, dim)
        self.items = tf.keras.layers.Embedding(num_items, dim)
        self.task = tfrs.tasks.Retrieval()

    def compute_loss(self, features, training=False):
        return self.task(self.users(features["user"]), self.items(features["item"]),
                         compute_metrics=False)


def bare_loop(frame, epochs, dim):
    """rows x epochs / seconds of model.fit for the bare TFRS loop."""
    user = pd.factorize(frame["user_id"])[0].astype(np.int32)
    item, items = pd.factorize(frame["item_id"])
    order = np.random.default_rng(0).permutation(len(frame))
    n = len(frame) // BATCH * BATCH
    batches = {"user": user[order][:n].reshape(-1, BATCH),
               "item": item.astype(np.int32)[order][:n].reshape(-1, BATCH)}
    tf.keras.utils.set_random_seed(0)
    model = BareTwoTower(int(user.max()) + 1, len(items), dim)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    dataset = tf.data.Dataset.from_tensor_slices(batches).prefetch(tf.data.AUTOTUNE)
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=epochs, verbose=0)
    return n * epochs / (time.perf_counter() - start), n * epochs / (time.process_time() - cpu)


def stage1_rate(train, config):
    start, cpu = time.perf_counter(), time.process_time()
    result = train()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    m = result.metrics
    rows = (m["n_fitted"] + m.get("n_interactions_fitted", m["n_interactions"])) * config.epochs
    return (rows / seconds, rows / cpu), seconds, m


def main(argv):
    del argv
    frame = synthetic_log(FLAGS.rows, FLAGS.users, FLAGS.items)
    item_ids = np.array(sorted(frame["item_id"].unique()))
    config = two_tower.TwoTowerConfig(embedding_dim=FLAGS.dim, epochs=FLAGS.epochs)
    print(f"log: {len(frame):,} rows, {FLAGS.users:,} users, {FLAGS.items:,} items; "
          f"{FLAGS.epochs} epoch(s) per fit, dim {FLAGS.dim}, batch {BATCH}; "
          f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}", flush=True)
    best = {"bare": (0.0, 0.0), "stage1": (0.0, 0.0)}
    results = {}
    for round_ in range(FLAGS.rounds):
        rate = bare_loop(frame, FLAGS.epochs, FLAGS.dim)
        print(f"round {round_ + 1}: bare loop {rate[0]:,.0f} interactions/s (per CPU second: "
              f"{rate[1]:,.0f})", flush=True)
        best["bare"] = tuple(map(max, best["bare"], rate))
        rate, seconds, metrics = stage1_rate(
            lambda: memory.train_two_tower(frame, item_ids, config, log=lambda s: None), config)
        print(f"round {round_ + 1}: stage 1 {rate[0]:,.0f} interactions/s (per CPU second: "
              f"{rate[1]:,.0f}; {seconds:.1f}s, of "
              f"which held-out fit + evaluation {metrics['holdout_seconds']:.1f}s (SVD "
              f"{metrics['svd_seconds']:.1f}s), full fit {metrics['full_fit_seconds']:.1f}s "
              f"= {metrics['full_fit_interactions_per_second']:,.0f} interactions/s; "
              f"recall@10 two-tower {metrics['recall@10']:.3f}, SVD "
              f"{metrics['svd_recall@10']:.3f}, popularity "
              f"{metrics['popularity_recall@10']:.3f})", flush=True)
        best["stage1"] = tuple(map(max, best["stage1"], rate))
        results.setdefault("stage1_metrics", metrics)
    if FLAGS.stream:
        directory = tempfile.mkdtemp(prefix="cfimage_benchmark_stage1_")
        frame.to_csv(os.path.join(directory, "interactions.csv"), index=False)
        spec = CatalogueSpec()

        def streamed():
            files = scan.interaction_files(directory, "interactions.csv")
            summary = scan.scan_interactions(files, spec, item_ids, config, log=lambda s: None)
            return stream.train_two_tower_stream(summary, item_ids, config, log=lambda s: None)

        rate, seconds, metrics = stage1_rate(streamed, config)
        best["stream"] = rate
        print(f"stage 1 streaming {rate[0]:,.0f} interactions/s ({seconds:.1f}s; recall@10 "
              f"{metrics['recall@10']:.3f})", flush=True)
    print("\n| path | interactions/s (wall) | / bare loop | interactions per CPU second | "
          "/ bare loop |\n| --- | ---: | ---: | ---: | ---: |")
    for name, (wall, cpu) in best.items():
        print(f"| {name} | {wall:,.0f} | {wall / best['bare'][0]:.2f} | {cpu:,.0f} | "
              f"{cpu / best['bare'][1]:.2f} |")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    results.update(best, rows=FLAGS.rows, users=FLAGS.users, items=FLAGS.items,
                   epochs=FLAGS.epochs, dim=FLAGS.dim,
                   ratio_wall=best["stage1"][0] / best["bare"][0],
                   ratio_cpu=best["stage1"][1] / best["bare"][1])
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(results, f, indent=2, default=float)


if __name__ == "__main__":
    app.run(main)
