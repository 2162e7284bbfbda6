"""Stage 1 on an interaction log too large for one pandas frame: tf.data over CSV files.

The in-memory path (cfimage.catalogue.reader + two_tower.train_two_tower) holds the whole log in
pandas, a few times over. This path never does; memory grows with the number of distinct users
and items, not with the number of rows:

  1. `scan_interactions` (cfimage/stage1/scan.py): one pass over the files (a path or glob, local
     or gs://) in pandas chunks that validates every row as catalogue.py does and counts what
     training needs (user vocabulary, per-item counts, weight sums), plus every row of a
     bounded, hash-chosen sample of users for recall@k.
  2. `train_two_tower_stream`: the held-out fit and the full refit of train_two_tower, each
     reading the files again with tf.data (read -> decode a block of lines -> filter -> shuffle
     -> batch -> prefetch) into the same model, loss, logQ correction and defaults
     (two_tower.fit_dataset).

The held-out split differs from the in-memory one: a pair (user, item) is held out when a
seeded hash of it falls below holdout_fraction, so no per-user shuffle needs memory. The share
is holdout_fraction of the distinct pairs on average, per user only in expectation (a user
with one item may have it held out). Recall@k is measured on the sampled users against
popularity; the truncated-SVD baseline is skipped (it needs the whole user x item matrix).
"""

import time

import numpy as np
import tensorflow as tf

from cfimage.stage1 import two_tower
from cfimage.stage1 import holdout
from cfimage.stage1.scan import (  # noqa: F401  (re-exported: the streaming API in one place)
    STREAM_AUTO_BYTES, LogSummary, Phase, StreamConfig, heldout_mask, interaction_files,
    scan_interactions, should_stream)


def make_dataset(summary, phase, config, stream=None):
    """Batches of user_id, item_id, weight (mean 1 over the phase) and item_probability (logQ)
    from the files; phase 'full' reads the fitted rows, 'holdout' those not held out."""
    stream = stream or StreamConfig()
    counts = summary.full if phase == "full" else summary.holdout
    columns = [summary.user_column, summary.item_column] + (
        [summary.weight_column] if summary.weight_column else [])
    index = [summary.header.index(c) for c in columns]
    select = sorted(index)
    probability = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        counts.item_counts.index.to_numpy(str),
        (counts.item_counts.to_numpy(np.float64) / counts.n_rows).astype(np.float32)), 0.0)
    listed = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        summary.listed_ids, np.ones(len(summary.listed_ids), np.int64)), 0)

    def decode(lines):
        lines = tf.boolean_mask(lines, tf.strings.length(tf.strings.strip(lines)) > 0)
        fields = tf.io.decode_csv(lines, [""] * len(select), select_cols=select)
        user, item = (tf.strings.strip(fields[select.index(i)]) for i in index[:2])
        weight = (tf.strings.to_number(tf.strings.strip(fields[select.index(index[2])]))
                  if summary.weight_column else tf.ones_like(user, tf.float32))
        keep = tf.ones_like(weight, tf.bool)
        if summary.drop_unknown:
            keep &= listed.lookup(item) > 0
        if config.min_rating is not None:
            keep &= weight >= config.min_rating
        if phase == "holdout":
            keep &= ~heldout_mask(user, item, config.holdout_fraction, config.seed)
        return {"user_id": tf.boolean_mask(user, keep), "item_id": tf.boolean_mask(item, keep),
                "weight": tf.boolean_mask(weight, keep) / np.float32(counts.weight_mean),
                "item_probability": probability.lookup(tf.boolean_mask(item, keep))}

    files = tf.data.Dataset.from_tensor_slices(summary.files).shuffle(
        len(summary.files), seed=config.seed, reshuffle_each_iteration=True)
    # Read: shards interleaved (mixes them before the shuffle buffer does). Decode a block of
    # lines per decode_csv call (one call per line is far slower). Shuffle rows, then batch.
    return (files.interleave(lambda path: tf.data.TextLineDataset(path).skip(1),
                             cycle_length=min(len(summary.files), 8),
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(stream.block_lines)
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
            .unbatch()
            .shuffle(stream.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
            .batch(config.batch_size)
            .prefetch(tf.data.AUTOTUNE))


def _holdout(summary, config, stream, log, writer, backup_dir):
    saved = holdout.resumed_holdout(backup_dir, log)
    if saved is not None:
        return saved
    if summary.n_heldout == 0 or summary.holdout.n_rows == 0:
        log("stage 1: no pair was held out (or min_rating left no training row); skipping "
            "held-out evaluation")
        return {}
    start = time.time()
    item_vocab = summary.holdout.item_counts.index.to_numpy(str)
    model, _ = two_tower.fit_dataset(
        lambda: make_dataset(summary, "holdout", config, stream), summary.users, item_vocab, config,
        log, "holdout", writer, backup_dir)
    rows = summary.eval_rows
    held = rows["held"].to_numpy(bool)
    metrics, _ = holdout.recall_metrics(
        model, item_vocab, rows[~held], rows[held], summary.holdout.item_counts.to_numpy(),
        config.recall_k)
    metrics.update({"n_train": summary.n_rows - summary.n_heldout,
                    "n_fitted": summary.holdout.n_rows, "n_heldout": summary.n_heldout,
                    "holdout_seconds": time.time() - start})
    holdout.report_holdout(
        metrics, config, log, writer,
        note=f"; streaming: recall on a sample of at most {stream.max_eval_users} users, "
             "SVD baseline skipped")
    holdout.save_holdout(backup_dir, metrics)
    return metrics


def train_two_tower_stream(summary, item_ids, config, stream=None, log=print,
                           tensorboard_dir=None, backup_dir=None):
    """train_two_tower for a scanned log (`scan_interactions`) -> CFResult for `item_ids`.

    Same model, loss, logQ correction, settings and result as the in-memory path; the
    differences (hash split, sampled recall, no SVD) are in the module docstring.
    """
    config.validate()
    stream = stream or StreamConfig()
    catalogue = np.asarray(item_ids).astype(str)
    if catalogue.ndim != 1 or len(catalogue) == 0:
        raise ValueError("item_ids: the catalogue must be a non-empty 1-d list of ids")
    if summary.full.n_rows == 0:
        raise ValueError(f"min_rating={config.min_rating} drops all {summary.n_rows} "
                         "interactions")
    catalogue_counts = summary.full.item_counts.reindex(catalogue).fillna(0).to_numpy(np.int64)
    if not (catalogue_counts > 0).any():
        raise ValueError(
            f"no catalogue item has any interaction (catalogue ids look like "
            f"{list(catalogue[:3])}, log item ids like {list(summary.item_counts.index[:3])})")
    writer = tf.summary.create_file_writer(tensorboard_dir) if tensorboard_dir else None
    metrics = {"n_interactions": summary.n_rows, "n_users": len(summary.users),
               "n_log_items": len(summary.item_counts), "streamed": True,
               "n_files": len(summary.files)}
    if config.min_rating is not None:
        metrics["n_interactions_fitted"] = summary.full.n_rows
        log(f"stage 1: min_rating={config.min_rating} keeps {summary.full.n_rows}/"
            f"{summary.n_rows} interactions")
    # 1. Held-out evaluation.
    if config.holdout_fraction > 0:
        metrics.update(_holdout(summary, config, stream, log, writer, backup_dir))

    # 2. Refit on everything and read the towers.
    start = time.time()
    model, losses = two_tower.fit_dataset(
        lambda: make_dataset(summary, "full", config, stream), summary.users,
        summary.full.item_counts.index.to_numpy(str), config, log, "full", writer, backup_dir)
    seconds = time.time() - start
    metrics.update({"final_loss": losses[-1], "full_fit_seconds": seconds,
                    "full_fit_interactions_per_second": summary.full.n_rows
                    * max(config.epochs, 1) / seconds})
    return two_tower.read_towers(model, catalogue, catalogue_counts, summary.users, config,
                                 metrics, log, writer)
