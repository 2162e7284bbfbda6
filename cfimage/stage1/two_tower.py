"""Stage 1: collaborative item vectors from an interaction log with a TFRS two-tower model.

A user tower and an item tower (each StringLookup + Embedding) are trained with an in-batch
softmax retrieval loss. The item tower's output for a catalogue item is that item's CF vector,
the regression target of the image model's second output (stage 2).

Flow of `train_two_tower`:
  1. hold out a seeded, per-user random fraction of the (user, item) pairs, fit, and measure
     held-out recall@k of the two-tower model against popularity and a truncated-SVD
     recommender (cfimage.stage1.baselines) fitted on the same training rows
     (`holdout_metrics`);
  2. refit a fresh model with the same settings on ALL interactions (held-out pairs are not
     wasted) and read the item tower for the catalogue.

`min_rating` drops interactions whose weight is below it before either fit. The held-out split
is drawn from the whole log first, so the evaluation (which pairs are held out, which known
items are excluded from a user's ranking) does not depend on `min_rating`: a held-out pair
counts whatever its rating, i.e. recall measures how well the model predicts interactions.

Interaction weights (ratings, counts) are used as per-example loss weights, rescaled to mean 1
over the fitted log so that the learning rate does not depend on their unit. Pass weight=1 to
treat every row as one implicit interaction. Items that appear only in the log (no image) stay
in training: they help to learn the user tower.

TFRS 0.7.7 runs on Keras 2, so this module uses `tf.keras` (tf_keras, selected by
TF_USE_LEGACY_KERAS=1 in cfimage/__init__.py); it never imports Keras 3.
"""

import dataclasses
import json
import os
import time

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_recommenders as tfrs

from cfimage import atomic
from cfimage.stage1.baselines import holdout_lists, recall_at_k
from cfimage.stage1.holdout import (evaluate_holdout, report_holdout, resumed_holdout,
                                    save_holdout, tower_outputs)
from cfimage.stage1.embedding_files import (align_embeddings, load_embeddings,
                                            save_embeddings, write_projector)

__all__ = [
    "TwoTowerConfig", "CFResult", "TwoTowerModel", "train_two_tower", "holdout_metrics",
    "holdout_lists", "recall_at_k", "split_holdout",
    "save_embeddings", "load_embeddings", "align_embeddings", "write_projector",
]


@dataclasses.dataclass
class TwoTowerConfig:
    """Stage-1 settings.

    Defaults tuned on MovieLens ml-latest-small (100,836 ratings, 610 users; 2 CPU cores) with
    scripts/stage1_quality.py (docs/results/stage1_movielens.md): held-out recall@10 0.257 vs
    truncated SVD (rank 32) 0.238 vs popularity 0.119 (seed 1 split: 0.256 vs 0.249 vs 0.115).
    dim 64 beat 16/32/128 (0.231/0.249/0.254); l2 1e-3 added ~0.002-0.003 on both seeds;
    10-20 epochs, temperature 0.5 or 2.0, and min_rating 3.5/4.0 were worse; without logQ
    correction recall fell to 0.09.
    """
    embedding_dim: int = 64
    epochs: int = 5
    batch_size: int = 1024
    # Adagrad: per-row step sizes suit sparse embedding updates (rarely seen items keep large
    # steps) and, unlike Adam, it does not move rows that are absent from the batch.
    learning_rate: float = 0.1
    temperature: float = 1.0
    l2: float = 1e-3  # L2 on both embedding tables (Keras regulariser, added per batch).
    holdout_fraction: float = 0.1  # Per-user random holdout of (user, item) pairs for recall@k.
    recall_k: int = 10
    min_interactions: int = 1  # Items with fewer rows in the full log get no vector (masked).
    logq_correction: bool = True  # Sampling-bias correction via candidate_sampling_probability.
    remove_accidental_hits: bool = True
    # Interactions with weight (e.g. rating) below this are dropped before fitting; None keeps all.
    min_rating: float | None = None
    svd_baseline: bool = True  # Also score a truncated-SVD recommender in the held-out run.
    svd_rank: int = 32  # Best of 8-256 on MovieLens (0.238; 40: 0.239, 64: 0.227).
    seed: int = 0

    def validate(self):
        checks = [
            (self.embedding_dim >= 1, "embedding_dim must be >= 1"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2 (in-batch negatives)"),
            (self.learning_rate > 0, "learning_rate must be > 0"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.l2 >= 0, "l2 must be >= 0"),
            (0 <= self.holdout_fraction < 1, "holdout_fraction must be in [0, 1)"),
            (self.recall_k >= 1, "recall_k must be >= 1"),
            (self.min_interactions >= 1, "min_interactions must be >= 1"),
            (self.min_rating is None or np.isfinite(self.min_rating),
             "min_rating must be None or a finite number"),
            (self.svd_rank >= 1, "svd_rank must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"TwoTowerConfig: {message}; got {self}")


@dataclasses.dataclass
class CFResult:
    item_ids: np.ndarray  # (n_items,) str: the catalogue ids passed in, same order.
    vectors: np.ndarray  # (n_items, d) float32; all zeros where has_vector is False.
    has_vector: np.ndarray  # (n_items,) bool.
    user_ids: np.ndarray  # (n_users,) str.
    user_vectors: np.ndarray  # (n_users, d) float32: user tower outputs.
    metrics: dict


class TwoTowerModel(tfrs.Model):
    """User tower and item tower, scored by dot product, trained with in-batch softmax."""

    def __init__(self, user_ids, item_ids, config):
        super().__init__()
        regularizer = tf.keras.regularizers.l2(config.l2) if config.l2 > 0 else None

        def tower(vocabulary, name):
            # Index 0 is the out-of-vocabulary bucket; it is never a training target.
            return tf.keras.Sequential([
                tf.keras.layers.StringLookup(vocabulary=list(vocabulary), mask_token=None),
                tf.keras.layers.Embedding(len(vocabulary) + 1, config.embedding_dim,
                                          embeddings_regularizer=regularizer),
            ], name=name)

        self.user_model = tower(user_ids, "user_tower")
        self.item_model = tower(item_ids, "item_tower")
        self.logq_correction = config.logq_correction
        self.remove_accidental_hits = config.remove_accidental_hits
        # No factorized top-k metrics: recall is computed by brute force in numpy afterwards.
        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature,
            remove_accidental_hits=config.remove_accidental_hits)
        # tfrs.Model reports the LAST batch's summed loss as "loss"; this tracks the epoch's
        # mean loss per interaction, which is what the progress lines and TensorBoard show.
        self.example_loss = tf.keras.metrics.Mean(name="example_loss")

    def compute_loss(self, features, training=False):
        user_embeddings = self.user_model(features["user_id"])
        item_embeddings = self.item_model(features["item_id"])
        # The task's loss is summed over the batch (TFRS default), so the step size is that of
        # the TFRS examples; Adagrad's accumulator makes it largely insensitive to that scale.
        loss = self.task(
            user_embeddings, item_embeddings,
            sample_weight=features["weight"],
            candidate_sampling_probability=(
                features["item_probability"] if self.logq_correction else None),
            candidate_ids=features["item_id"] if self.remove_accidental_hits else None,
            compute_metrics=False, compute_batch_metrics=False)
        batch = tf.cast(tf.shape(user_embeddings)[0], tf.float32)
        self.example_loss.update_state(loss / batch, sample_weight=batch)
        return loss


# ---------------------------------------------------------------------------------------------
# Input checks and splitting.

def _clean_interactions(interactions):
    if not isinstance(interactions, pd.DataFrame):
        raise ValueError(f"interactions must be a pandas DataFrame, got {type(interactions)}")
    missing = {"user_id", "item_id"} - set(interactions.columns)
    if missing:
        raise ValueError(
            f"interactions: missing column(s) {sorted(missing)}; have {list(interactions.columns)}")
    if len(interactions) == 0:
        raise ValueError("interactions: empty log; stage 1 needs at least one interaction")
    frame = interactions[["user_id", "item_id"]].copy()
    for column in ("user_id", "item_id"):
        bad = frame[column].isna().to_numpy()
        if bad.any():
            raise ValueError(f"interactions: row {int(np.argmax(bad))}: missing {column}")
        frame[column] = frame[column].astype(str)
    if "weight" in interactions.columns:
        weight = pd.to_numeric(interactions["weight"], errors="coerce").to_numpy(np.float64)
        bad = ~(np.isfinite(weight) & (weight > 0))
        if bad.any():
            row = int(np.argmax(bad))
            value = interactions["weight"].tolist()[row]
            raise ValueError(
                f"interactions: row {row}: weight {value!r} is not a finite number > 0")
    else:
        weight = np.ones(len(frame))
    frame["weight"] = weight
    return frame.reset_index(drop=True)


def split_holdout(frame, fraction, seed):
    """Per-user random holdout of distinct (user, item) pairs -> (train, heldout) frames.

    Users with >= 2 distinct items hold out max(1, floor(fraction * n_items)) of them, at most
    n_items - 1. All rows of a held-out pair leave training, so a held-out item is never also a
    training item of the same user.
    """
    pairs = frame[["user_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng(seed)
    pairs["order"] = rng.random(len(pairs))
    pairs["rank"] = pairs.groupby("user_id")["order"].rank(method="first") - 1
    size = pairs.groupby("user_id")["item_id"].transform("size")
    n_hold = np.where(size >= 2, np.clip(np.floor(fraction * size), 1, size - 1), 0)
    held = pairs.loc[pairs["rank"] < n_hold, ["user_id", "item_id"]]
    marked = frame.merge(held.assign(held=True), on=["user_id", "item_id"], how="left")
    is_held = marked["held"].fillna(False).to_numpy(bool)
    return frame[~is_held].reset_index(drop=True), frame[is_held].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Fitting.

def _fit(frame, config, log, phase, writer, backup_dir=None):
    """Fits a fresh TwoTowerModel on `frame`; returns (model, user vocab, item vocab, losses)."""
    user_vocab = np.array(sorted(frame["user_id"].unique()))
    item_vocab = np.array(sorted(frame["item_id"].unique()))
    counts = frame["item_id"].value_counts()
    # logQ: probability that an item is a row's candidate, i.e. its frequency in the fitted log.
    probability = (frame["item_id"].map(counts) / len(frame)).to_numpy(np.float32)
    weight = frame["weight"].to_numpy(np.float64)
    features = {
        "user_id": frame["user_id"].to_numpy(str),
        "item_id": frame["item_id"].to_numpy(str),
        "weight": (weight / weight.mean()).astype(np.float32),
        "item_probability": probability,
    }
    # Shuffle the whole log every epoch (seeded) so in-batch negatives change between epochs.
    model, losses = fit_dataset(
        lambda: (tf.data.Dataset.from_tensor_slices(features)
                 .shuffle(len(frame), seed=config.seed, reshuffle_each_iteration=True)
                 .batch(config.batch_size)
                 .prefetch(tf.data.AUTOTUNE)),
        user_vocab, item_vocab, config, log, phase, writer, backup_dir)
    return model, user_vocab, item_vocab, losses


def fit_dataset(make_dataset, user_vocab, item_vocab, config, log, phase, writer,
                backup_dir=None):
    """Fits a fresh TwoTowerModel on the batches of `make_dataset()` (user_id, item_id, weight
    with mean 1, item_probability for logQ); returns (model, per-epoch losses).

    make_dataset is called after the global seed is set: a seeded shuffle's order depends on it.

    The one fitting routine of stage 1, in memory and streaming (cfimage.stage1.stream). With
    `backup_dir`, <backup_dir>/<phase> holds a BackupAndRestore checkpoint written after every
    epoch: a killed run restarted with the same inputs resumes after its last completed epoch.
    The caller removes the backup when it no longer needs it.
    """
    tf.keras.utils.set_random_seed(config.seed)
    dataset = make_dataset()
    model = TwoTowerModel(user_vocab, item_vocab, config)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate))

    losses = []
    loss_file = os.path.join(backup_dir, phase, "losses.json") if backup_dir else None
    start = time.time()

    def on_epoch_begin(epoch, logs):
        if epoch > 0 and not losses and backup_dir:
            if tf.io.gfile.exists(loss_file):
                losses.extend(json.loads(tf.io.gfile.GFile(loss_file).read()))
            log(f"resuming stage 1 from epoch {epoch} ([{phase}] fit: epochs 1-{epoch} of "
                f"{config.epochs} restored from {os.path.join(backup_dir, phase)})")

    def on_epoch_end(epoch, logs):
        losses.append(float(logs["example_loss"]))
        if loss_file:  # after BackupAndRestore (first callback) has saved this epoch
            atomic.write_json(loss_file, losses)
        log(f"stage 1 [{phase}] epoch {epoch + 1}/{config.epochs}: loss {losses[-1]:.4f} "
            f"(mean softmax cross-entropy per interaction; {time.time() - start:.1f}s)")
        if writer is not None:
            with writer.as_default():
                tf.summary.scalar(f"stage1/{phase}/loss", losses[-1], step=epoch + 1)

    diverged = []

    def on_train_batch_end(batch, logs):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            diverged.append((int(model.optimizer.iterations.numpy()), float(loss)))
            model.stop_training = True

    callbacks = [tf.keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin,
                                                   on_epoch_end=on_epoch_end,
                                                   on_train_batch_end=on_train_batch_end)]
    if backup_dir:
        # Build the towers first, so that the checkpoint restores into existing variables.
        model.user_model(tf.constant([""]))
        model.item_model(tf.constant([""]))
        tf.io.gfile.makedirs(os.path.join(backup_dir, phase))
        # delete_checkpoint=False: a run killed after its last epoch restores that epoch's
        # weights instead of fitting again; the caller removes the backup.
        callbacks.insert(0, tf.keras.callbacks.BackupAndRestore(
            os.path.join(backup_dir, phase), delete_checkpoint=False))
    model.fit(dataset, epochs=config.epochs, verbose=0, callbacks=callbacks)
    if diverged:
        step, value = diverged[0]
        kept = (f"the backup of its last completed epoch is kept in "
                f"{os.path.join(backup_dir, phase)}" if backup_dir else "nothing was saved")
        raise SystemExit(f"stage 1 [{phase}] fit: the loss became {value} at training step "
                         f"{step}; stopped ({kept}). Try a lower --cf_learning_rate or a higher "
                         "--cf_temperature.")
    if not losses and loss_file and tf.io.gfile.exists(loss_file):  # every epoch was restored
        losses.extend(json.loads(tf.io.gfile.GFile(loss_file).read()))
        log(f"resuming stage 1 from epoch {config.epochs} ([{phase}] fit: all epochs restored "
            f"from {os.path.join(backup_dir, phase)})")
    return model, losses


def _filter_rating(frame, config):
    if config.min_rating is None:
        return frame
    return frame[frame["weight"] >= config.min_rating].reset_index(drop=True)


def _holdout(frame, config, log, writer, backup_dir=None):
    """Step 1 of train_two_tower on a cleaned frame; returns metrics ({} when impossible)."""
    saved = resumed_holdout(backup_dir, log)
    if saved is not None:
        return saved
    known, heldout = split_holdout(frame, config.holdout_fraction, config.seed)
    fitted = _filter_rating(known, config)
    if len(heldout) == 0 or len(fitted) == 0:
        log("stage 1: no user has 2+ distinct items (or min_rating left no training row); "
            "skipping held-out evaluation")
        return {}
    start = time.time()
    model, user_vocab, item_vocab, _ = _fit(fitted, config, log, "holdout", writer, backup_dir)
    metrics = evaluate_holdout(model, user_vocab, item_vocab, known, fitted, heldout, config)
    metrics.update({"n_train": len(known), "n_fitted": len(fitted), "n_heldout": len(heldout),
                    "holdout_seconds": time.time() - start})
    report_holdout(metrics, config, log, writer)
    save_holdout(backup_dir, metrics)
    return metrics


def holdout_metrics(interactions, config, log=print):
    """Only the held-out evaluation of train_two_tower (no refit): a dict of metrics.

    For tuning: recall@k of the two-tower, popularity and SVD, as train_two_tower reports them.
    """
    config.validate()
    if not 0 < config.holdout_fraction < 1:
        raise ValueError(f"holdout_metrics: holdout_fraction must be in (0, 1); got "
                         f"{config.holdout_fraction}")
    return _holdout(_clean_interactions(interactions), config, log, None)


# ---------------------------------------------------------------------------------------------
# Entry point.

def train_two_tower(interactions, item_ids, config, log=print, tensorboard_dir=None,
                    backup_dir=None):
    """Learns CF vectors for the catalogue `item_ids` from `interactions`; returns a CFResult.

    interactions: DataFrame with user_id, item_id (str) and optional weight (> 0, default 1);
    it may hold items outside the catalogue (kept in training). Catalogue items with fewer than
    config.min_interactions rows get zeros and has_vector False. With `backup_dir`, a run
    killed mid-way and restarted with the same inputs resumes after its last completed epoch
    (see `fit_dataset`); remove that directory once the result is saved.
    """
    config.validate()
    frame = _clean_interactions(interactions)
    catalogue = np.asarray(item_ids).astype(str)
    if catalogue.ndim != 1 or len(catalogue) == 0:
        raise ValueError("item_ids: the catalogue must be a non-empty 1-d list of ids")
    fitted = _filter_rating(frame, config)
    if len(fitted) == 0:
        raise ValueError(f"min_rating={config.min_rating} drops all {len(frame)} interactions "
                         f"(weights range {frame['weight'].min()}-{frame['weight'].max()})")
    counts = fitted["item_id"].value_counts()
    catalogue_counts = counts.reindex(catalogue).fillna(0).to_numpy(np.int64)
    if not (catalogue_counts > 0).any():
        raise ValueError(
            f"no catalogue item has any interaction (catalogue ids look like "
            f"{list(catalogue[:3])}, log item ids like {list(counts.index[:3])})")
    writer = tf.summary.create_file_writer(tensorboard_dir) if tensorboard_dir else None
    metrics = {"n_interactions": len(frame), "n_users": int(frame["user_id"].nunique()),
               "n_log_items": int(frame["item_id"].nunique())}
    if config.min_rating is not None:
        metrics["n_interactions_fitted"] = len(fitted)
        log(f"stage 1: min_rating={config.min_rating} keeps {len(fitted)}/{len(frame)} "
            "interactions")

    # 1. Held-out evaluation.
    if config.holdout_fraction > 0:
        metrics.update(_holdout(frame, config, log, writer, backup_dir))

    # 2. Refit on everything and read the towers.
    start = time.time()
    model, user_vocab, _, losses = _fit(fitted, config, log, "full", writer, backup_dir)
    metrics.update({"final_loss": losses[-1], "full_fit_seconds": time.time() - start})
    return read_towers(model, catalogue, catalogue_counts, user_vocab, config, metrics, log,
                       writer)


def read_towers(model, catalogue, catalogue_counts, users, config, metrics, log, writer):
    """The fitted model's CFResult: item vectors for the catalogue (zeros, and has_vector
    False, below min_interactions) and user vectors (in memory and streaming)."""
    has_vector = np.asarray(catalogue_counts) >= config.min_interactions
    vectors = tower_outputs(model.item_model, catalogue)
    vectors[~has_vector] = 0.0
    metrics["n_items_with_vector"] = int(has_vector.sum())
    log(f"stage 1: vectors for {int(has_vector.sum())}/{len(catalogue)} catalogue items "
        f"(min_interactions={config.min_interactions}), d={config.embedding_dim}")
    if writer is not None:
        writer.flush()
    return CFResult(item_ids=catalogue, vectors=vectors, has_vector=has_vector, user_ids=users,
                    user_vectors=tower_outputs(model.user_model, users), metrics=metrics)
