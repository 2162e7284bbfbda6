"""Training callbacks: checkpoint selection on validation mAP, learning-rate logging."""

import json
import math
import os
import time

import keras
import numpy as np

from cfimage import atomic
from cfimage.stage2.metrics import evaluate_scores


class SelectByValidationMAP(keras.callbacks.Callback):
    """After each epoch: validation macro mAP into the logs; keep the best weights.

    The checkpoint is chosen on validation only; the test split is never
    looked at during training. The best value survives a resume (a state
    file next to the checkpoint) so a restarted run does not overwrite a
    better checkpoint with a worse one. Put it before TensorBoard in the
    callback list so that TensorBoard also records what it adds to the logs.
    """

    def __init__(self, dataset, labels, label_names, checkpoint_path, log=print):
        super().__init__()
        self.dataset = dataset
        self.labels = labels
        self.label_names = label_names
        self.checkpoint_path = checkpoint_path
        self.state_path = checkpoint_path.replace(".weights.h5", ".json")
        self.log = log
        self.best = -math.inf
        self.best_epoch = None
        if os.path.isfile(self.state_path):
            with open(self.state_path) as f:
                state = json.load(f)
            self.best, self.best_epoch = state["val_map"], state["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        scores = self.model.predict(self.dataset, verbose=0)["labels"]
        logs["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        if not np.all(np.isfinite(scores)):
            # The weights went NaN/inf (StopOnNonFiniteLoss stops the run): record it and
            # keep the best checkpoint as it is.
            logs["val_map"] = logs["val_precision_at_1"] = float("nan")
            self.log(f"epoch {epoch + 1}: val_map nan (the model's validation scores are not "
                     "finite); the best checkpoint is not touched")
            return
        metrics = evaluate_scores(self.labels, scores, self.label_names)
        logs["val_map"] = metrics["macro_map"]
        logs["val_precision_at_1"] = metrics["precision_at_1"]
        improved = metrics["macro_map"] > self.best
        if improved:
            self.best, self.best_epoch = metrics["macro_map"], epoch + 1
            atomic.save_weights(self.model, self.checkpoint_path)
            atomic.write_json(self.state_path, {"val_map": self.best, "epoch": self.best_epoch})
        losses = "  ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())
                           if k.endswith("loss") and isinstance(v, float))
        self.log(f"epoch {epoch + 1}: {losses}  val_map {metrics['macro_map']:.4f}  "
                 f"val_p@1 {metrics['precision_at_1']:.3f}"
                 + ("  (best so far, saved)" if improved else ""))


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
