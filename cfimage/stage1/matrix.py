"""Stage-1 models fit on the binarised user x item matrix of the fitted rows (in memory):
`--cf_model=mult_vae` (cfimage/stage1/mult_vae.py) and `--cf_model=svd` (truncated SVD).

The flow is the two-tower's (cfimage/stage1/two_tower.py, `train`), with the same rows and the
same held-out protocol (cfimage/stage1/holdout.py):
  1. fit on the rows that are not held out, and report held-out recall@k next to popularity
     (and the rank-`svd_rank` SVD baseline), scoring users by user · item of the fitted tables;
  2. refit on all fitted rows and read the item vectors of the catalogue.

SVD vectors: the rank-`embedding_dim` factorisation X ≈ U S Vᵀ, split symmetrically: items
V S^½, users U S^½ (their dot product is the SVD reconstruction). Mult-VAE vectors: the
decoder's item columns plus the item bias (`mult_vae`). Interaction weights and counts are
ignored (binarised), as in the paper's recipe; min_rating and min_interactions hold.
"""

import time

import numpy as np
import tensorflow as tf

from cfimage.stage1 import baselines, holdout, mult_vae, two_tower


def train(rows, item_ids, config, log=print, tensorboard_dir=None, backup_dir=None):
    """CF vectors of `config.model` (mult_vae or svd) for the catalogue `item_ids` from the
    in-memory rows (memory.Rows) -> two_tower.CFResult."""
    summary = rows.summary
    catalogue, catalogue_rows, catalogue_counts = two_tower.checked_catalogue(
        summary, item_ids, config)
    writer = tf.summary.create_file_writer(tensorboard_dir) if tensorboard_dir else None
    metrics = {"n_interactions": summary.n_rows, "n_users": len(summary.users),
               "n_log_items": len(summary.item_counts), "cf_model": config.model}

    # 1. Held-out evaluation.
    saved = holdout.resumed_holdout(backup_dir, log) if config.holdout_fraction > 0 else {}
    if saved is None and (summary.n_heldout == 0 or summary.holdout.n_rows == 0):
        log("stage 1: no pair was held out (or min_rating left no training row); skipping "
            "held-out evaluation")
    elif saved is None:
        start = time.time()
        users, items, _ = fit(rows, "holdout", config, log, writer, backup_dir)
        saved = holdout.evaluate(users, items, summary, config, rows.svd_pairs())
        saved.update({"n_train": summary.n_rows - summary.n_heldout,
                      "n_fitted": summary.holdout.n_rows, "n_heldout": summary.n_heldout,
                      "holdout_seconds": time.time() - start})
        holdout.report_holdout(saved, config, log, writer)
        holdout.save_holdout(backup_dir, saved)
    metrics.update(saved or {})

    # 2. Refit on everything and read the tables.
    start = time.time()
    users, items, losses = fit(rows, "full", config, log, writer, backup_dir)
    metrics["full_fit_seconds"] = time.time() - start
    if losses:
        metrics["final_loss"] = losses[-1]
    if writer is not None:
        writer.flush()
    return two_tower.catalogue_result(summary, catalogue, catalogue_rows, catalogue_counts,
                                      items, users, config, metrics, log)


def fit(rows, phase, config, log, writer=None, backup_dir=None):
    """(user table, item table, per-epoch losses) of `config.model` fitted on the rows of
    `phase` ("holdout" or "full"), rows aligned with the summary's users and items."""
    keep = rows.keep(phase)
    summary = rows.summary
    matrix = baselines.binary_matrix(rows.user[keep], rows.item[keep], len(summary.users),
                                     len(summary.items))
    if config.model == "svd":
        users, items = svd_tables(matrix, config.embedding_dim, config.seed)
        log(f"stage 1 [{phase}] SVD: rank {items.shape[1]} of a {matrix.shape[0]} x "
            f"{matrix.shape[1]} matrix ({matrix.nnz} pairs)")
        return users, items, []
    if config.model == "mult_vae":
        log(f"stage 1 [{phase}] Mult-VAE on a {matrix.shape[0]} x {matrix.shape[1]} matrix "
            f"({matrix.nnz} pairs): {config.vae_epochs} epochs, batch {config.vae_batch_size}, "
            f"Adam {config.vae_learning_rate}, β {config.vae_beta}")
        directory = f"{backup_dir}/{phase}_vae" if backup_dir else None
        return mult_vae.fit(matrix, config, log, writer, directory, phase)
    raise ValueError(f"matrix.fit: unknown model {config.model!r}; use mult_vae or svd")


def svd_tables(matrix, rank, seed):
    """Rank-`rank` truncated SVD split symmetrically: (users U S^½, items V S^½)."""
    users_scaled, items = baselines.svd_factors(matrix, rank, seed)  # (U S, V)
    singular = np.linalg.norm(users_scaled, axis=0)  # U has orthonormal columns
    root = np.sqrt(singular)
    users = users_scaled / np.where(root > 0, root, 1.0)
    return users.astype(np.float32), (items * root).astype(np.float32)
