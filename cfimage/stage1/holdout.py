"""Stage 1's held-out evaluation: recall@k of the two-tower model against popularity and a
truncated-SVD recommender, its log line and TensorBoard scalars, and the saved metrics that let
a killed stage 1 skip the held-out fit when it restarts. Used by the in-memory path
(cfimage/stage1/two_tower.py) and the streaming path (cfimage/stage1/stream.py).

Runs on tf_keras models (TFRS); never imports Keras 3.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf

from cfimage import atomic
from cfimage.stage1 import baselines
from cfimage.stage1.baselines import holdout_lists, recall_at_k


def tower_outputs(tower, ids, batch_size=8192):
    ids = np.asarray(ids, dtype=str)
    parts = [tower(tf.constant(ids[i:i + batch_size])).numpy()
             for i in range(0, len(ids), batch_size)]
    if not parts:
        return np.zeros((0, tower.layers[-1].output_dim), np.float32)
    return np.concatenate(parts).astype(np.float32)


def recall_metrics(model, item_vocab, known, heldout, popularity, k):
    """Held-out recall@k of the two-tower model and of popularity -> (metrics, lists).

    Both rank the same candidates (`item_vocab`, the items of the fitted rows) for the users
    of `heldout`, with each user's `known` (training) items excluded, through `recall_at_k`.
    popularity: (len(item_vocab),) interaction counts of the fitted rows. lists: the
    (users, train_items, heldout_items) of `holdout_lists`, for further recommenders.
    """
    users, train_items, heldout_items = holdout_lists(known, heldout, item_vocab)
    user_vectors = tower_outputs(model.user_model, users)
    item_vectors = tower_outputs(model.item_model, item_vocab)
    popularity = np.asarray(popularity, np.float64)
    metrics = {
        f"recall@{k}": recall_at_k(lambda rows: user_vectors[rows] @ item_vectors.T,
                                   train_items, heldout_items, k),
        f"popularity_recall@{k}": recall_at_k(
            lambda rows: np.tile(popularity, (rows.stop - rows.start, 1)),
            train_items, heldout_items, k),
        "n_eval_users": len(users),
    }
    return metrics, (users, train_items, heldout_items)


def evaluate_holdout(model, user_vocab, item_vocab, known, fitted, heldout, config):
    """Held-out recall@k of the two-tower model, popularity and (optionally) truncated SVD.

    Popularity and SVD are fitted on `fitted`, the rows the two-tower model was trained on.
    """
    k = config.recall_k
    counts = fitted["item_id"].value_counts().reindex(item_vocab).to_numpy(np.float64)
    metrics, (users, train_items, heldout_items) = recall_metrics(
        model, item_vocab, known, heldout, counts, k)
    if config.svd_baseline:
        start = time.time()
        column = {item: j for j, item in enumerate(item_vocab)}
        fitted_row = {user: i for i, user in enumerate(user_vocab)}
        matrix = baselines.binary_matrix(fitted["user_id"].map(fitted_row),
                                         fitted["item_id"].map(column),
                                         len(user_vocab), len(item_vocab))
        svd_users, svd_items = baselines.svd_factors(matrix, config.svd_rank, config.seed)
        # Evaluated users absent from the fitted rows (all their rows filtered) score zeros.
        svd_users = np.concatenate([svd_users, np.zeros((1, svd_users.shape[1]), np.float32)])
        eval_rows = np.array([fitted_row.get(user, -1) for user in users])
        metrics[f"svd_recall@{k}"] = recall_at_k(
            lambda rows: svd_users[eval_rows[rows]] @ svd_items.T,
            train_items, heldout_items, k)
        metrics["svd_rank"] = svd_items.shape[1]
        metrics["svd_seconds"] = time.time() - start
    return metrics


def report_holdout(metrics, config, log, writer, note=""):
    """The held-out log line and TensorBoard scalars (in memory and streaming)."""
    k = config.recall_k
    svd = (f" vs SVD {metrics[f'svd_recall@{k}']:.3f}" if f"svd_recall@{k}" in metrics else "")
    log(f"stage 1: recall@{k} two-tower {metrics[f'recall@{k}']:.3f}{svd} vs popularity "
        f"{metrics[f'popularity_recall@{k}']:.3f} (n_users={metrics['n_eval_users']}, "
        f"n_heldout={metrics['n_heldout']}, n_train={metrics['n_train']}, fitted on "
        f"{metrics['n_fitted']}{note})")
    if writer is not None:
        with writer.as_default():
            for name, key in [("two_tower", f"recall@{k}"), ("svd", f"svd_recall@{k}"),
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
