"""Stage 1: collaborative item vectors from an interaction log with a TFRS two-tower model.

A user table and an item table (Embedding layers over integer rows: ids are mapped to rows once,
when the rows are read) are trained with an in-batch softmax retrieval loss. The item table's
row of a catalogue item is that item's CF vector, the regression target of the image model's
second output (stage 2).

`train` is the one training routine of stage 1. The rows come from a pandas frame
(cfimage/stage1/memory.py) or are streamed from CSV files (cfimage/stage1/stream.py); both
count them with cfimage.stage1.scan.LogCounter into a LogSummary and hand `train` blocks of
integer rows. Flow:
  1. hold out pairs (cfimage.stage1.holdout), fit on the rest, and measure held-out recall@k
     against popularity and, when the rows are in memory, a truncated-SVD recommender;
  2. refit a fresh model with the same settings on ALL fitted rows (held-out pairs are not
     wasted) and read the item table for the catalogue.

`min_rating` drops interactions whose weight is below it before either fit; the held-out split
does not depend on it (a held-out pair counts whatever its rating). Interaction weights
(ratings, counts) are per-example loss weights, rescaled to mean 1 over each fit's rows so that
the learning rate does not depend on their unit. Items that appear only in the log (no image)
stay in training: they help to learn the user table.

TFRS 0.7.7 runs on Keras 2, so this module uses `tf.keras` (tf_keras, selected by
TF_USE_LEGACY_KERAS=1 in cfimage/__init__.py); it never imports Keras 3.
"""

import dataclasses
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from cfimage import atomic
from cfimage.errors import UserError
from cfimage.stage1 import holdout

STEPS_PER_EXECUTION = 16  # training steps per call of the train function (see `fit`)
MODELS = ("two_tower", "mult_vae", "svd")  # TwoTowerConfig.model


@dataclasses.dataclass
class TwoTowerConfig:
    """Stage-1 settings.

    Defaults tuned on MovieLens ml-latest-small (100,836 ratings, 610 users; 2 CPU cores) with
    scripts/stage1_quality.py (docs/results/stage1_movielens.md): dim 64 beat 16/32/128;
    l2 1e-3 added ~0.002-0.003 recall@10; 10-20 epochs, temperature 0.5 or 2.0, and min_rating
    3.5/4.0 were worse; without logQ correction recall fell to 0.09. Held-out recall@10 with
    these defaults: 0.262 vs SVD 0.248 vs popularity 0.117.
    """
    embedding_dim: int = 64
    epochs: int = 5
    batch_size: int = 1024
    # Adagrad: per-row step sizes suit sparse embedding updates (rarely seen items keep large
    # steps) and, unlike Adam, it does not move rows that are absent from the batch.
    learning_rate: float = 0.1
    temperature: float = 1.0
    # L2 on the table rows of each batch (each occurrence of a user or item), added to the
    # summed loss: the gradient stays sparse, so a step costs the batch's rows, not the tables.
    l2: float = 1e-3
    holdout_fraction: float = 0.1  # Hashed holdout of (user, item) pairs for recall@k.
    recall_k: int = 10
    max_eval_users: int = 10_000  # Users (hash-chosen) whose held-out pairs score recall@k.
    min_interactions: int = 1  # Items with fewer rows in the full log get no vector (masked).
    logq_correction: bool = True  # Sampling-bias correction via candidate_sampling_probability.
    # Masking in-batch negatives that are the row's own item: no difference on MovieLens
    # (recall@10 0.262 either way, docs/results/stage1_movielens.md) and ~15% of a step
    # (five element-wise ops over the batch x batch scores), so off by default.
    remove_accidental_hits: bool = False
    # Interactions with weight (e.g. rating) below this are dropped before fitting; None keeps all.
    min_rating: float | None = None
    svd_baseline: bool = True  # Also score a truncated-SVD recommender (rows in memory only).
    svd_rank: int = 32  # Best of 8-256 on MovieLens (0.238; 40: 0.239, 64: 0.227).
    seed: int = 0
    # The stage-1 model (cfimage/stage1/matrix.py for the others): two_tower (this module),
    # mult_vae (the paper's Mult-VAE with item bias) or svd (truncated-SVD item factors).
    # embedding_dim is every model's vector size (Mult-VAE: the decoder's hidden layer; its
    # vectors add the item bias, embedding_dim + 1).
    model: str = "two_tower"
    # Mult-VAE, the official recipe of the paper's code (facebookresearch/
    # collaborative_image_understanding, configs/train_recommender.yaml): bottleneck 32,
    # Adam 0.01, batch 4096 users, 100 epochs, β = 1.
    vae_latent_dim: int = 32
    vae_epochs: int = 100
    vae_batch_size: int = 4096
    vae_learning_rate: float = 0.01
    vae_beta: float = 1.0

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
            (self.max_eval_users >= 1, "max_eval_users must be >= 1"),
            (self.min_interactions >= 1, "min_interactions must be >= 1"),
            (self.min_rating is None or np.isfinite(self.min_rating),
             "min_rating must be None or a finite number"),
            (self.svd_rank >= 1, "svd_rank must be >= 1"),
            (self.model in MODELS, f"model must be one of {', '.join(MODELS)}"),
            (self.vae_latent_dim >= 1, "vae_latent_dim must be >= 1"),
            (self.vae_epochs >= 1, "vae_epochs must be >= 1"),
            (self.vae_batch_size >= 1, "vae_batch_size must be >= 1"),
            (self.vae_learning_rate > 0, "vae_learning_rate must be > 0"),
            (self.vae_beta >= 0, "vae_beta must be >= 0"),
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
    user_vectors: np.ndarray  # (n_users, d) float32: user table rows.
    metrics: dict


class TwoTowerModel(tfrs.Model):
    """User table and item table, scored by dot product, trained with in-batch softmax.

    Batches hold integer rows: "user" (row of the user table), "item" (row of the item table)
    and "weight" (per-example loss weight). `candidate_probability[i]` is the probability that
    item row i is a batch's candidate (its share of the fitted rows), for the logQ correction.
    """

    def __init__(self, num_users, num_items, candidate_probability, config):
        super().__init__()
        self.user_model = tf.keras.layers.Embedding(num_users, config.embedding_dim,
                                                    name="user_tower")
        self.item_model = tf.keras.layers.Embedding(num_items, config.embedding_dim,
                                                    name="item_tower")
        self.candidate_probability = tf.constant(
            np.asarray(candidate_probability, np.float32))
        self.l2 = config.l2
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
        user_embeddings = self.user_model(features["user"])
        item_embeddings = self.item_model(features["item"])
        # The task's loss is summed over the batch (TFRS default), so the step size is that of
        # the TFRS examples; Adagrad's accumulator makes it largely insensitive to that scale.
        loss = self.task(
            user_embeddings, item_embeddings,
            sample_weight=features["weight"],
            candidate_sampling_probability=(
                tf.gather(self.candidate_probability, features["item"])
                if self.logq_correction else None),
            candidate_ids=features["item"] if self.remove_accidental_hits else None,
            compute_metrics=False, compute_batch_metrics=False)
        batch = tf.cast(tf.shape(user_embeddings)[0], tf.float32)
        self.example_loss.update_state(loss / batch, sample_weight=batch)
        if self.l2 > 0:
            loss += self.l2 * (tf.reduce_sum(tf.square(user_embeddings))
                               + tf.reduce_sum(tf.square(item_embeddings)))
        return loss


# ---------------------------------------------------------------------------------------------
# Batches: the shared tail of every input pipeline.

def batches(blocks, rows, batch_size, window_blocks, seed):
    """Blocks of rows (dicts of 1-d "user", "item", "weight" tensors, in the order they were
    read; `rows` of them in all) -> shuffled batches, reshuffled every epoch.

    Blocks are shuffled with a buffer of `window_blocks` blocks; then each window of that many
    blocks is permuted row by row (a seeded permutation per window and epoch) and cut into
    batches of `batch_size` (a window's last rows join the next window's). A window that holds
    every block is a full shuffle of the rows. The work is per block and per batch, never per
    row: tf.data's per-element shuffle ran at ~50k rows/s here. The dataset knows its length
    (ceil(rows / batch_size) batches), so that `fit` can run several steps per call.
    """
    def split(window, key):
        rows = {name: values.flat_values for name, values in window.items()}
        size = tf.shape(rows["user"], out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size), seed=tf.stack([key, tf.constant(seed, tf.int64)]))
        index = tf.RaggedTensor.from_row_starts(order, tf.range(0, size, batch_size))
        return tf.data.Dataset.from_tensor_slices(index).map(
            lambda rows_of_batch: {name: tf.gather(values, rows_of_batch)
                                   for name, values in rows.items()})

    windows = (blocks.shuffle(window_blocks, seed=seed, reshuffle_each_iteration=True)
               .ragged_batch(window_blocks))
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return (tf.data.Dataset.zip((windows, keys)).flat_map(split)
            .rebatch(batch_size)
            .apply(tf.data.experimental.assert_cardinality(math.ceil(rows / batch_size)))
            .prefetch(tf.data.AUTOTUNE))


# ---------------------------------------------------------------------------------------------
# Fitting.

def fit(make_dataset, summary, phase, config, log, writer, backup_dir=None):
    """Fits a fresh TwoTowerModel on the batches of `make_dataset()` for `phase` ("holdout"
    or "full" of the LogSummary); returns (model, per-epoch losses).

    make_dataset is called after the global seed is set: a seeded shuffle depends on it.
    With `backup_dir`, <backup_dir>/<phase> holds a BackupAndRestore checkpoint written after
    every epoch: a killed run restarted with the same inputs resumes after its last completed
    epoch. The caller removes the backup when it no longer needs it.
    """
    counts = summary.phase(phase)
    tf.keras.utils.set_random_seed(config.seed)
    dataset = make_dataset()
    model = TwoTowerModel(len(summary.users), len(summary.items),
                          counts.item_counts / max(counts.n_rows, 1), config)
    # Several steps per call of the compiled train function: a step here is a few ms, and
    # Keras' per-call Python work (callbacks, logs) would otherwise be a large share of it.
    model.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate),
                  steps_per_execution=STEPS_PER_EXECUTION)

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
        # Build the tables first, so that the checkpoint restores into existing variables.
        model.user_model(tf.constant([0]))
        model.item_model(tf.constant([0]))
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
        raise UserError(f"stage 1 [{phase}] fit: the loss became {value} at training step "
                        f"{step}; stopped ({kept}). Try a lower --cf_learning_rate or a higher "
                        "--cf_temperature.")
    if not losses and loss_file and tf.io.gfile.exists(loss_file):  # every epoch was restored
        losses.extend(json.loads(tf.io.gfile.GFile(loss_file).read()))
        log(f"resuming stage 1 from epoch {config.epochs} ([{phase}] fit: all epochs restored "
            f"from {os.path.join(backup_dir, phase)})")
    return model, losses


def window_blocks(rows, block_rows):
    """Blocks of `block_rows` rows that hold `rows` rows (at least 1)."""
    return max(1, math.ceil(rows / block_rows))


def train(summary, make_dataset, item_ids, config, log=print, tensorboard_dir=None,
          backup_dir=None, svd_pairs=None, metrics=None):
    """The one training routine of stage 1 -> CFResult for the catalogue `item_ids`.

    summary: the LogSummary of the rows (scan.LogCounter). make_dataset(phase): the batches
    of that phase's rows ("holdout": fitted rows not held out; "full": all fitted rows).
    svd_pairs: (user row, item row) arrays of the held-out fit's rows when they are in memory
    (for the SVD baseline). Catalogue items with fewer than min_interactions fitted rows get
    zeros and has_vector False. With `backup_dir` a killed run resumes (see `fit`).
    """
    catalogue, catalogue_rows, catalogue_counts = checked_catalogue(summary, item_ids, config)
    writer = tf.summary.create_file_writer(tensorboard_dir) if tensorboard_dir else None
    metrics = dict(metrics or {}, n_interactions=summary.n_rows, n_users=len(summary.users),
                   n_log_items=len(summary.item_counts))
    if config.min_rating is not None:
        metrics["n_interactions_fitted"] = summary.full.n_rows
        log(f"stage 1: min_rating={config.min_rating} keeps {summary.full.n_rows}/"
            f"{summary.n_rows} interactions")

    # 1. Held-out evaluation.
    if config.holdout_fraction > 0:
        metrics.update(holdout_fit(summary, make_dataset, config, log, writer, backup_dir,
                                   svd_pairs))

    # 2. Refit on everything and read the tables.
    start = time.time()
    model, losses = fit(lambda: make_dataset("full"), summary, "full", config, log, writer,
                        backup_dir)
    seconds = time.time() - start
    metrics.update({"final_loss": losses[-1], "full_fit_seconds": seconds,
                    "full_fit_interactions_per_second":
                        summary.full.n_rows * config.epochs / seconds})
    if writer is not None:
        writer.flush()
    return catalogue_result(summary, catalogue, catalogue_rows, catalogue_counts,
                            model.item_model.embeddings.numpy(),
                            model.user_model.embeddings.numpy(), config, metrics, log)


def checked_catalogue(summary, item_ids, config):
    """The config checked, and the catalogue `item_ids` as (ids, table rows, counts) of the
    LogSummary `summary` (catalogue_table); ValueError for an empty catalogue or a log that
    min_rating empties. Every stage-1 model starts with it."""
    config.validate()
    catalogue = np.asarray(item_ids).astype(str)
    if catalogue.ndim != 1 or len(catalogue) == 0:
        raise ValueError("item_ids: the catalogue must be a non-empty 1-d list of ids")
    if summary.full.n_rows == 0:
        raise ValueError(f"min_rating={config.min_rating} drops all {summary.n_rows} "
                         "interactions")
    return (catalogue, *catalogue_table(summary, catalogue))


def catalogue_table(summary, catalogue):
    """(row of each catalogue item in the summary's item table, -1 if absent; its fitted
    rows), or ValueError when no catalogue item is in the log."""
    row_of = {item: row for row, item in enumerate(summary.items.tolist())}
    catalogue_rows = np.array([row_of.get(item, -1) for item in catalogue.tolist()], np.int64)
    catalogue_counts = np.where(catalogue_rows >= 0,
                                summary.full.item_counts[np.maximum(catalogue_rows, 0)], 0)
    if not (catalogue_counts > 0).any():
        raise ValueError(
            f"no catalogue item has any interaction (catalogue ids look like "
            f"{catalogue[:3].tolist()}, log item ids like "
            f"{summary.item_counts.index[:3].tolist()})")
    return catalogue_rows, catalogue_counts


def catalogue_result(summary, catalogue, catalogue_rows, catalogue_counts, item_table,
                     user_table, config, metrics, log):
    """The CFResult of the final fit's tables: catalogue items with fewer than
    min_interactions fitted rows get zeros and has_vector False."""
    has_vector = catalogue_counts >= config.min_interactions
    vectors = np.where(has_vector[:, None], item_table[np.maximum(catalogue_rows, 0)], 0.0)
    metrics["n_items_with_vector"] = int(has_vector.sum())
    log(f"stage 1: vectors for {int(has_vector.sum())}/{len(catalogue)} catalogue items "
        f"(min_interactions={config.min_interactions}), d={item_table.shape[1]}")
    return CFResult(item_ids=catalogue, vectors=vectors.astype(np.float32),
                    has_vector=has_vector, user_ids=summary.users,
                    user_vectors=np.asarray(user_table, np.float32), metrics=metrics)


def holdout_fit(summary, make_dataset, config, log, writer, backup_dir, svd_pairs):
    """Step 1 of `train`: held-out metrics ({} when nothing is held out)."""
    saved = holdout.resumed_holdout(backup_dir, log)
    if saved is not None:
        return saved
    if summary.n_heldout == 0 or summary.holdout.n_rows == 0:
        log("stage 1: no pair was held out (or min_rating left no training row); skipping "
            "held-out evaluation")
        return {}
    start = time.time()
    model, _ = fit(lambda: make_dataset("holdout"), summary, "holdout", config, log, writer,
                   backup_dir)
    metrics = holdout.evaluate(model.user_model.embeddings.numpy(),
                               model.item_model.embeddings.numpy(), summary, config, svd_pairs)
    metrics.update({"n_train": summary.n_rows - summary.n_heldout,
                    "n_fitted": summary.holdout.n_rows, "n_heldout": summary.n_heldout,
                    "holdout_seconds": time.time() - start})
    holdout.report_holdout(metrics, config, log, writer)
    holdout.save_holdout(backup_dir, metrics)
    return metrics
