"""Training callbacks: validation mAP into the logs and the best checkpoint chosen on it
(Keras' ModelCheckpoint), step times, a stop on a diverging loss."""

import json
import math
import os
import time

import keras
import numpy as np

from cfimage import atomic
from cfimage.stage2.metrics import evaluate_scores


class ValidationMAP(keras.callbacks.Callback):
    """After each epoch: validation macro mAP and precision@1 (and the learning rate) into the
    logs, as `val_map` and `val_precision_at_1`, for the callbacks after it (ModelCheckpoint,
    CSVLogger, TensorBoard). Scores that are not finite (the weights went NaN/inf; the NaN
    guard stops the run) give NaN, which no checkpoint selection counts as an improvement."""

    def __init__(self, dataset, labels, label_names):
        super().__init__()
        self.dataset = dataset
        self.labels = labels
        self.label_names = label_names

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        scores = self.model.predict(self.dataset, verbose=0)["labels"]
        logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        if not np.all(np.isfinite(scores)):
            logs["val_map"] = logs["val_precision_at_1"] = float("nan")
            return
        metrics = evaluate_scores(self.labels, scores, self.label_names)
        logs["val_map"] = metrics["macro_map"]
        logs["val_precision_at_1"] = metrics["precision_at_1"]


class BestCheckpoint(keras.callbacks.Callback):
    """The record of a ModelCheckpoint(monitor="val_map", mode="max", save_best_only=True):
    when it saved a better epoch (into `<best>.saving.weights.h5`), this moves the file into
    place in one rename (a run killed mid-write keeps its previous best intact) and writes the
    best value and epoch next to it (`<best>.json`), which metrics.json reports and a resumed
    run starts from. It also logs one line per epoch."""

    def __init__(self, checkpoint_path, log=print):
        super().__init__()
        self.path = checkpoint_path
        self.saving_path = checkpoint_path.replace(".weights.h5", ".saving.weights.h5")
        self.state_path = checkpoint_path.replace(".weights.h5", ".json")
        self.log = log
        self.best, self.best_epoch = -math.inf, None
        self.early_stopping = None  # set by select_by_validation_map when a patience is given
        if os.path.isfile(self.state_path):
            with open(self.state_path) as f:
                state = json.load(f)
            self.best, self.best_epoch = state["val_map"], state["epoch"]
        # Selection itself is Keras': strictly greater than the best so far (NaN never is).
        self.checkpoint = keras.callbacks.ModelCheckpoint(
            self.saving_path, monitor="val_map", mode="max", save_best_only=True,
            save_weights_only=True, initial_value_threshold=self.best)

    def forget(self):
        """Removes the best checkpoint of an earlier run (a fresh run starts from -inf)."""
        for stale in (self.path, self.saving_path, self.state_path):
            if os.path.exists(stale):
                os.remove(stale)
        self.best, self.best_epoch = -math.inf, None
        self.checkpoint.best = -math.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if math.isnan(logs.get("val_map", math.nan)):
            self.log(f"epoch {epoch + 1}: val_map nan (the model's validation scores are not "
                     "finite); the best checkpoint is not touched")
            return
        improved = float(self.checkpoint.best) != self.best
        if improved:
            os.replace(self.saving_path, self.path)
            self.best, self.best_epoch = float(self.checkpoint.best), epoch + 1
            atomic.write_json(self.state_path, {"val_map": self.best, "epoch": self.best_epoch})
        losses = "  ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())
                           if k.endswith("loss") and isinstance(v, float))
        self.log(f"epoch {epoch + 1}: {losses}  val_map {logs['val_map']:.4f}  "
                 f"val_p@1 {logs['val_precision_at_1']:.3f}"
                 + ("  (best so far, saved)" if improved else ""))


def select_by_validation_map(dataset, labels, label_names, checkpoint_path, resuming,
                             log=print, patience=0):
    """Callbacks that keep the weights of the epoch with the best validation macro mAP at
    `checkpoint_path`: [ValidationMAP, ModelCheckpoint, BestCheckpoint], in this order, and
    the BestCheckpoint (its `best`, `best_epoch`). The test split is never looked at. A fresh
    run (not `resuming`) forgets the best checkpoint of an earlier run in its workdir; a
    resumed one only replaces it with a better epoch. Put them before TensorBoard in the
    callback list so that TensorBoard also records what they add to the logs.

    `patience` > 0 adds Keras' EarlyStopping on the same validation mAP: the phase stops
    after that many epochs without a better one (counted within the phase; a resumed run
    counts afresh). The chosen checkpoint is the same as without it up to the stop."""
    record = BestCheckpoint(checkpoint_path, log=log)
    if not resuming:
        record.forget()
    os.makedirs(os.path.dirname(checkpoint_path) or ".", exist_ok=True)
    callbacks = [ValidationMAP(dataset, labels, label_names), record.checkpoint, record]
    if patience:
        record.early_stopping = keras.callbacks.EarlyStopping(
            monitor="val_map", mode="max", patience=patience)
        callbacks.append(record.early_stopping)
    return callbacks, record


class StepTimer(keras.callbacks.Callback):
    """Wall-clock time at the end of every training batch (for throughput benchmarks)."""

    def __init__(self):
        super().__init__()
        self.ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


class StopOnDivergence(keras.callbacks.Callback):
    """Stops training at the first NaN/inf loss, or at a loss above `max_loss` (an exploding
    run), and remembers where it happened."""

    def __init__(self, max_loss=None):
        super().__init__()
        self.max_loss = max_loss
        self.failed_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None:
            return
        if not np.isfinite(loss) or (self.max_loss and loss > self.max_loss):
            self.failed_at = (self.model.optimizer.iterations.numpy(), float(loss))
            self.model.stop_training = True
