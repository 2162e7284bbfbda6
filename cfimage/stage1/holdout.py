"""Stage 1's one held-out protocol: which (user, item) pairs are held out, which users are
scored, and recall@k of the stage-1 model (two-tower, Mult-VAE or SVD) against popularity
and (when the fitted rows are in memory) a truncated-SVD recommender; its log line and
TensorBoard scalars; and the saved metrics that let a killed stage 1 skip the held-out fit
when it restarts.

The same rules hold wherever the rows come from (a pandas frame or streamed files):
  * a pair (user, item) is held out when a seeded hash of it falls below holdout_fraction
    (`heldout_mask`): all rows of a pair go to one side, and no per-user state is needed.
    The share is holdout_fraction of the distinct pairs on average; per user only in
    expectation (a user with one item may have it held out, and is then scored on it);
  * recall@k is measured for the users of smallest seeded hash (`user_rank`), at most
    TwoTowerConfig.max_eval_users of them (all users of a smaller log), with each user's
    training items excluded from the ranking. The candidates are the items of the fitted rows.

Runs on tf_keras models (TFRS); never imports Keras 3.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf

from cfimage import atomic
from cfimage.stage1 import baselines

HASH_BUCKETS = 1 << 20  # resolution of the held-out share: 1e-6
MODEL_NAMES = {"two_tower": "two-tower", "mult_vae": "Mult-VAE", "svd": "SVD model"}


def heldout_mask(user_ids, item_ids, fraction, seed):
    """True where the pair (user, item) is held out: a seeded hash, the same in numpy and
    inside tf.data, so every pass agrees without storing the split."""
    key = tf.strings.join([user_ids, item_ids], separator="\x1f")
    bucket = tf.strings.to_hash_bucket_strong(key, HASH_BUCKETS, key=[seed, 1])
    return bucket < int(round(fraction * HASH_BUCKETS))


def user_rank(user_ids, seed):
    """Seeded hash of user ids: the users scored for recall@k are those of smallest rank."""
    return tf.strings.to_hash_bucket_strong(np.asarray(user_ids).astype(str), 1 << 62,
                                            key=[seed, 2]).numpy()


def evaluate(user_vectors, item_vectors, summary, config, svd_pairs=None):
    """Held-out recall@k of the stage-1 model (its user . item scores: the two-tower, or a
    model of cfimage/stage1/matrix.py), popularity and (with `svd_pairs`) SVD.

    user_vectors / item_vectors: the held-out fit's tables, rows aligned with summary.users /
    summary.items. Candidates are the items of the held-out fit's rows; popularity is their
    count there. svd_pairs: (user row, item row) of those rows, when they are in memory.
    """
    k = config.recall_k
    counts = summary.holdout.item_counts
    candidates = np.flatnonzero(counts > 0)
    rows = summary.eval_rows
    held = rows["held"].to_numpy(bool)
    users, train_items, heldout_items = baselines.holdout_lists(
        rows[~held], rows[held], summary.items[candidates])
    # Users without a fitted row (all their pairs held out) score zeros: row -1 below.
    user_row = np.searchsorted(summary.users, users)
    found = user_row < len(summary.users)
    found[found] = summary.users[user_row[found]] == users[found]
    user_row[~found] = -1
    user_table = np.concatenate([user_vectors, np.zeros((1, user_vectors.shape[1]),
                                                        np.float32)])
    user_block = user_table[user_row]
    item_block = item_vectors[candidates]
    popularity = counts[candidates].astype(np.float64)
    metrics = {
        f"recall@{k}": baselines.recall_at_k(lambda r: user_block[r] @ item_block.T,
                                             train_items, heldout_items, k),
        f"popularity_recall@{k}": baselines.recall_at_k(
            lambda r: np.tile(popularity, (r.stop - r.start, 1)), train_items, heldout_items,
            k),
        "n_eval_users": len(users),
    }
    if config.svd_baseline and svd_pairs is not None:
        start = time.time()
        column = np.full(len(summary.items), -1, np.int64)
        column[candidates] = np.arange(len(candidates))
        matrix = baselines.binary_matrix(svd_pairs[0], column[svd_pairs[1]],
                                         len(summary.users), len(candidates))
        svd_users, svd_items = baselines.svd_factors(matrix, config.svd_rank, config.seed)
        svd_users = np.concatenate([svd_users, np.zeros((1, svd_users.shape[1]), np.float32)])
        metrics[f"svd_recall@{k}"] = baselines.recall_at_k(
            lambda r: svd_users[user_row[r]] @ svd_items.T, train_items, heldout_items, k)
        metrics["svd_rank"] = svd_items.shape[1]
        metrics["svd_seconds"] = time.time() - start
    return metrics


def report_holdout(metrics, config, log, writer):
    """The held-out log line and TensorBoard scalars."""
    k = config.recall_k
    svd = (f" vs SVD {metrics[f'svd_recall@{k}']:.3f}" if f"svd_recall@{k}" in metrics
           else " (SVD baseline skipped: the rows are streamed)")
    model = MODEL_NAMES.get(config.model, config.model)
    log(f"stage 1: recall@{k} {model} {metrics[f'recall@{k}']:.3f}{svd} vs popularity "
        f"{metrics[f'popularity_recall@{k}']:.3f} (n_users={metrics['n_eval_users']}, "
        f"n_heldout={metrics['n_heldout']}, n_train={metrics['n_train']}, fitted on "
        f"{metrics['n_fitted']})")
    if writer is not None:
        with writer.as_default():
            for name, key in [(config.model, f"recall@{k}"), ("svd", f"svd_recall@{k}"),
                              ("popularity", f"popularity_recall@{k}")]:
                if key in metrics:
                    tf.summary.scalar(f"stage1/recall@{k}/{name}", metrics[key], step=0)


def resumed_holdout(backup_dir, log):
    """The held-out metrics that a killed run saved in `backup_dir`, or None."""
    path = os.path.join(backup_dir, "holdout_metrics.json") if backup_dir else None
    if path and os.path.isfile(path):
        log(f"resuming stage 1 after its held-out evaluation (metrics from {path})")
        return json.load(open(path))
    return None


def save_holdout(backup_dir, metrics):
    """Keeps the held-out metrics for a restart and drops the held-out fit's backup."""
    if backup_dir:
        atomic.write_json(os.path.join(backup_dir, "holdout_metrics.json"), metrics)
        if tf.io.gfile.isdir(os.path.join(backup_dir, "holdout")):
            tf.io.gfile.rmtree(os.path.join(backup_dir, "holdout"))
