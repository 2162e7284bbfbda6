"""Stage 1 on an interaction log too large for one pandas frame: tf.data over CSV files.

The in-memory path (cfimage/stage1/memory.py) holds the whole log in pandas. This path never
does; memory grows with the number of distinct users and items, not with the number of rows:

  1. `scan.scan_interactions`: one pass over the files (a path or glob, local or gs://) that
     validates every row with the catalogue's validator and counts what training needs (the
     LogSummary, as the in-memory path counts its frame).
  2. `train_two_tower_stream`: the one training routine (two_tower.train), reading the files
     again with tf.data for each fit: read -> decode a block of lines -> map ids to table rows
     -> keep the phase's rows -> shuffle blocks and rows within a window of
     StreamConfig.shuffle_buffer rows -> batch -> prefetch (two_tower.batches).

What differs from the in-memory path is where the rows come from, and so: the shuffle mixes a
window of rows rather than the whole log, and the SVD baseline is skipped (it needs the whole
user x item matrix). The held-out split and the evaluated users are the same (holdout.py).
"""

import numpy as np
import tensorflow as tf

from cfimage.stage1 import holdout, two_tower
from cfimage.stage1.scan import StreamConfig


def _table(keys):
    """id -> row of `keys` (-1 for other ids)."""
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        np.asarray(keys, str), np.arange(len(keys), dtype=np.int32)), -1)


def make_dataset(summary, phase, config, stream=None):
    """Batches of user and item rows and weight (mean 1 over the phase) from the files;
    phase 'full' reads the fitted rows, 'holdout' those not held out."""
    stream = stream or StreamConfig()
    weight_mean = np.float32(summary.phase(phase).weight_mean)
    columns = [summary.user_column, summary.item_column] + (
        [summary.weight_column] if summary.weight_column else [])
    index = [summary.header.index(c) for c in columns]
    select = sorted(index)
    users, items = _table(summary.users), _table(summary.items)

    def decode(lines):
        lines = tf.boolean_mask(lines, tf.strings.length(tf.strings.strip(lines)) > 0)
        fields = tf.io.decode_csv(lines, [""] * len(select), select_cols=select)
        user, item = (tf.strings.strip(fields[select.index(i)]) for i in index[:2])
        weight = (tf.strings.to_number(tf.strings.strip(fields[select.index(index[2])]))
                  if summary.weight_column else tf.ones_like(user, tf.float32))
        user_row, item_row = users.lookup(user), items.lookup(item)
        # Rows on items without a table row were dropped by the unknown-item policy.
        keep = (user_row >= 0) & (item_row >= 0)
        if config.min_rating is not None:
            keep &= weight >= config.min_rating
        if phase == "holdout":
            keep &= ~holdout.heldout_mask(user, item, config.holdout_fraction, config.seed)
        return {"user": tf.boolean_mask(user_row, keep), "item": tf.boolean_mask(item_row, keep),
                "weight": tf.boolean_mask(weight, keep) / weight_mean}

    files = tf.data.Dataset.from_tensor_slices(summary.files).shuffle(
        len(summary.files), seed=config.seed, reshuffle_each_iteration=True)
    # Read: shards interleaved (mixes them before the shuffle does). Decode a block of lines
    # per decode_csv call (one call per line is far slower).
    blocks = (files.interleave(lambda path: tf.data.TextLineDataset(path).skip(1),
                               cycle_length=min(len(summary.files), 8),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
              .batch(stream.block_lines)
              .map(decode, num_parallel_calls=tf.data.AUTOTUNE))
    return two_tower.batches(
        blocks, summary.phase(phase).n_rows, config.batch_size,
        two_tower.window_blocks(stream.shuffle_buffer, stream.block_lines), config.seed)


def train_two_tower_stream(summary, item_ids, config, stream=None, log=print,
                           tensorboard_dir=None, backup_dir=None):
    """two_tower.train for a scanned log (scan.scan_interactions) -> CFResult for `item_ids`."""
    stream = stream or StreamConfig()
    return two_tower.train(
        summary, lambda phase: make_dataset(summary, phase, config, stream), item_ids, config,
        log=log, tensorboard_dir=tensorboard_dir, backup_dir=backup_dir,
        metrics={"streamed": True, "n_files": len(summary.files)})
