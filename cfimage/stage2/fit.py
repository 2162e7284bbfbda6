"""Stage-2 training mechanics: optimizer, compile per arm (cfimage/stage2/arms.py), a
resumable fit that stops on a diverging loss."""

import os
import sys

import keras
import numpy as np

from cfimage.errors import UserError
from cfimage.stage2 import arms, losses
from cfimage.stage2.callbacks import StopOnDivergence


class TrainingDiverged(UserError):
    """The training loss became NaN/inf or exploded: the message says where and what to try."""


def make_optimizer(name, learning_rate, weight_decay, clipnorm, total_steps):
    """AdamW or SGD (momentum 0.9) with cosine decay and optional global-norm clipping."""
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, total_steps), alpha=0.01)
    clip = {"global_clipnorm": clipnorm} if clipnorm > 0 else {}
    if name == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=weight_decay, **clip)
    if name == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=weight_decay, **clip)
    raise ValueError(f"unknown optimizer {name!r}; use adamw or sgd")


def compile_model(model, optimizer, label_loss, arm, label_weight, cf_weight, jit_compile,
                  triplet_margin=0.25, cf_loss=None, distill_weight=0.0):
    """Compiles the two-headed model: L = label_weight·L_labels + cf_weight·L_cf, with the CF
    loss of `arm` (a name in arms.ARMS), or `cf_loss` (a keras loss of --cf_loss,
    losses.make_cf_loss) in place of the reconstruction loss. A distill arm's L_labels adds
    distill_weight × the distillation loss (its label targets carry the soft labels)."""
    spec = arms.get(arm)
    if spec.cf_loss == arms.TRIPLET:
        cf_loss, cf_metrics = losses.CFTripletLoss(triplet_margin), []
    else:
        cf_loss = cf_loss or losses.CFReconstructionLoss()
        cf_metrics = [losses.CFError("mse", name="mse"), losses.CFError("l1", name="l1")]
    metrics = {"cf": cf_metrics}
    if spec.distill:
        label_loss = losses.with_distillation(label_loss, distill_weight)
        metrics["labels"] = [losses.Distillation(
            isinstance(label_loss, losses.DistilledBCE), name="distill")]
    model.compile(optimizer=optimizer,
                  loss={"labels": label_loss, "cf": cf_loss},
                  loss_weights={"labels": float(label_weight), "cf": float(cf_weight)},
                  metrics=metrics, jit_compile=jit_compile)


def build_training_state(model, dataset):
    """Creates the compiled model's optimizer slots and loss and metric trackers before fit,
    symbolically from `dataset`'s element spec (no batch is read, no weight changes).

    Why: a model built outside a distribution strategy (the default strategy) gets them from
    Keras inside the first trace of its train step, and a tf.function that created variables
    on its first call is traced a second time without them: the whole network traced twice,
    10-30 s of an end-to-end EfficientNet on a CPU. Under a strategy (multi_worker) Keras
    builds them in fit, the same way, and this finds them built."""
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=dataset.element_spec)  # what fit does under a strategy


def resumable_fit(model, train_ds, val_ds, epochs, workdir, tag, callbacks=(), log=print,
                  max_loss=None, initial_epoch=0):
    """model.fit that a killed run resumes (BackupAndRestore in <workdir>/backup[_tag]).
    `epochs` more epochs, numbered from `initial_epoch` (a phase that continues a run).

    Raises TrainingDiverged (a UserError) with the stage and step when the loss stops being
    finite or, with `max_loss`, grows above it (the epoch's running mean of the training loss).
    """
    suffix = f"_{tag}" if tag else ""
    nan_guard = StopOnDivergence(max_loss)
    all_callbacks = [
        *callbacks,
        nan_guard,
        # double_checkpoint: a kill while the backup is being written leaves the previous
        # epoch's copy, which Keras falls back to (seen: a SIGKILL mid-write corrupted it).
        keras.callbacks.BackupAndRestore(os.path.join(workdir, f"backup{suffix}"),
                                         double_checkpoint=True),
        keras.callbacks.CSVLogger(os.path.join(workdir, f"history{suffix}.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard", tag or ""),
                                    update_freq="epoch"),
    ]
    build_training_state(model, train_ds)
    # shuffle=False: the tf.data pipeline shuffles (data.make_dataset); Keras cannot.
    model.fit(train_ds, validation_data=val_ds, epochs=initial_epoch + epochs,
              initial_epoch=initial_epoch, callbacks=all_callbacks, shuffle=False,
              verbose=1 if sys.stdout.isatty() else 2)
    if nan_guard.failed_at:
        step, value = nan_guard.failed_at
        best = os.path.join(workdir, "checkpoints", "best.weights.h5")
        kept = (f"the best checkpoint so far is intact at {best}" if os.path.exists(best)
                else "no checkpoint had been chosen yet")
        what = (f"became {value}" if not np.isfinite(value) else
                f"exploded to {value:.4g} (above --max_loss={max_loss:g})")
        raise TrainingDiverged(f"stage 2{' (' + tag + ')' if tag else ''}: the loss {what} at "
                               f"training step {step}; stopped ({kept}). Try a lower "
                               "--learning_rate, a --clipnorm or a lower --cf_weight.")
