"""Stage 2 of a run: the image model built, compiled for its arm (cfimage/stage2/arms.py),
trained (the two_stage arm first pre-trains on the CF targets alone), and the checkpoint of
the epoch with the best validation mAP kept at <workdir>/checkpoints/best.weights.h5.

With --train_backbone=false the same phases train the heads on cached backbone features
instead (cfimage/stage2/cached.py, built on the helpers here).

A killed run resumes: every phase restores its last epoch (BackupAndRestore), a finished
pre-training phase is loaded from its weights file, and the best checkpoint of the
interrupted run is only replaced by a better epoch.
"""

import contextlib
import dataclasses
import os

import keras

from cfimage import atomic
from cfimage.errors import UserError
from cfimage.stage2 import fit, losses
from cfimage.stage2 import model as model_lib
from cfimage.stage2.callbacks import select_by_validation_map

BUILD_ERRORS = (ValueError, ImportError, FileNotFoundError, RuntimeError)  # bad weights etc.


@dataclasses.dataclass
class Stage2Result:
    model: object  # the trained keras.Model that `test` feeds (evaluation loads `best` into it)
    best: object  # callbacks.BestCheckpoint: path, best (validation mAP), best_epoch
    test: object  # the test split's dataset, in the input `model` takes
    serving_model: object  # pixels -> {"labels", "cf"}, sharing its weights with `model`
    summary: dict  # how stage 2 trained, for metrics.json


def train(catalogue, inputs, cf_dim, stage2, runtime, log=print):
    """Trains the arm of the Stage2Config `stage2` on the Stage2Inputs `inputs`: end to end,
    or (--train_backbone=false) on cached features. Returns a Stage2Result whose model has its
    last epoch's weights."""
    if not stage2.train_backbone:
        from cfimage.stage2 import cached  # builds on this module
        return cached.train(catalogue, inputs, cf_dim, stage2, runtime, log=log)
    arm, outdir = stage2.arm_spec, runtime.outdir
    # The model, its optimizer and its metrics are created in the strategy's scope.
    strategy_scope = contextlib.ExitStack()
    strategy_scope.enter_context(runtime.strategy.scope())
    keras.utils.set_random_seed(stage2.seed)  # same initial weights for every arm of a seed
    try:
        model = model_lib.build_model(stage2.backbone, stage2.weights, stage2.image_size,
                                      catalogue.num_classes, inputs.multi_label, cf_dim,
                                      dropout=stage2.dropout, adapter_units=stage2.adapter_units,
                                      hybrid=arm.cf_input,
                                      cf_input_dropout=stage2.cf_input_dropout)
    except BUILD_ERRORS as error:
        raise UserError(str(error)) from None
    log(f"model {model.name}: {model.count_params():,} parameters, image size "
        f"{stage2.image_size}")
    sync_batchnorm(model, stage2, runtime, log)
    steps_per_epoch = -(-len(inputs.splits["train"]) // runtime.global_batch)
    loss = label_loss(catalogue, inputs)
    checkpoint_dir = os.path.join(outdir, "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    if arm.pretrain:
        pretrain(model, inputs.train, inputs.validation, stage2, runtime, loss, steps_per_epoch,
                 os.path.join(checkpoint_dir, "pretrained_cf.weights.h5"), log)
    compile_phase(model, stage2, runtime, loss, stage2.epochs * steps_per_epoch, 1.0,
                  stage2.cf_weight)
    strategy_scope.close()

    resuming = os.path.isdir(os.path.join(outdir, "backup"))
    log(f"stage 2 ({arm.name}): {stage2.epochs} epochs of {steps_per_epoch} steps, "
        f"λ = {stage2.cf_weight} (the first step traces the graph and takes a while)")
    best = fit_selected(model, inputs.train, inputs.validation, catalogue, inputs, stage2,
                        runtime, stage2.epochs, resuming, log=log)
    return Stage2Result(model, best, inputs.test, model, {
        "train_backbone": True, "adapter_units": stage2.adapter_units, **hybrid_summary(stage2),
        **distill_summary(stage2, inputs)})


def hybrid_summary(stage2):
    """metrics.json's record of a hybrid arm's CF input (cfimage/stage2/hybrid.py)."""
    if not stage2.arm_spec.cf_input:
        return {}
    return {"cf_input": True, "cf_input_dropout": stage2.cf_input_dropout,
            "selection_view": "cold"}


def distill_summary(stage2, inputs):
    """metrics.json's record of a distill arm's teacher (cfimage/stage2/distill.py)."""
    if not stage2.arm_spec.distill:
        return {}
    return {"distill_weight": stage2.distill_weight, "teacher": inputs.teacher}


def sync_batchnorm(model, stage2, runtime, log):
    if stage2.sync_batchnorm:
        log(f"synchronised BatchNormalization in {model_lib.synchronize_batchnorm(model)} "
            f"layers, over {runtime.strategy.num_replicas_in_sync} replica(s)")


def label_loss(catalogue, inputs):
    """The losses of the run by head: {"labels": positive-weighted masked BCE (multi-label)
    or masked cross-entropy, with the class weights of the labelled training items; "cf": the
    --cf_loss of inputs.cf_loss (None: the arm's)}. compile_phase takes this dict (or a label
    loss alone)."""
    train_rows = inputs.splits["train"]
    if not inputs.multi_label:
        labels = losses.MaskedCrossEntropy()
    else:
        labels = losses.MaskedWeightedBCE(losses.positive_weights(
            catalogue.labels[train_rows], inputs.labelled[train_rows]))
    return {"labels": labels, "cf": getattr(inputs, "cf_loss", None)}


def compile_phase(model, stage2, runtime, loss, total_steps, label_weight, cf_weight,
                  learning_rate=None):
    """Compiles `model` for one training phase: a fresh optimizer whose cosine schedule spans
    `total_steps`, at `learning_rate` (default: the run's, scaled by the replicas)."""
    optimizer = fit.make_optimizer(stage2.optimizer, learning_rate or runtime.learning_rate,
                                   stage2.weight_decay, stage2.clipnorm, total_steps)
    by_head = loss if isinstance(loss, dict) else {"labels": loss}
    fit.compile_model(model, optimizer, by_head["labels"], stage2.arm, label_weight, cf_weight,
                      runtime.jit_compile, triplet_margin=stage2.triplet_margin,
                      cf_loss=by_head.get("cf"), distill_weight=stage2.distill_weight)


def pretrain(model, train, validation, stage2, runtime, loss, steps_per_epoch, path, log):
    """two_stage phase 1: regresses the CF targets only (label weight 0, λ 1) for
    --pretrain_epochs, saved at `path`; a finished phase is loaded from there."""
    if os.path.exists(path):
        log(f"two-stage: phase 1 already done, loading {path}")
    else:
        log(f"two-stage: phase 1, {stage2.pretrain_epochs} epochs on the CF targets only")
        compile_phase(model, stage2, runtime, loss, stage2.pretrain_epochs * steps_per_epoch,
                      0.0, 1.0)
        fit.resumable_fit(model, train, validation, stage2.pretrain_epochs, runtime.outdir,
                          "pretrain", log=log, max_loss=stage2.max_loss)
        atomic.save_weights(model, path)
    model.load_weights(path)


def fit_selected(model, train, validation, catalogue, inputs, stage2, runtime, epochs,
                 resuming, tag="", initial_epoch=0, log=print):
    """Fits `epochs` epochs keeping the epoch of best validation mAP at
    <outdir>/checkpoints/best.weights.h5; returns its BestCheckpoint record. `resuming`: keep
    the best of an earlier (interrupted, or earlier-phase) fit and replace it only with a
    better epoch."""
    if resuming and not tag:
        log(f"resuming stage 2 from {os.path.join(runtime.outdir, 'backup')}")
    callbacks, best = select_by_validation_map(
        validation, catalogue.labels[inputs.splits["validation"]], catalogue.label_names,
        os.path.join(runtime.outdir, "checkpoints", "best.weights.h5"), resuming, log=log,
        patience=stage2.early_stopping_patience)
    fit.resumable_fit(model, train, validation, epochs, runtime.outdir, tag,
                      callbacks=callbacks, log=log, max_loss=stage2.max_loss,
                      initial_epoch=initial_epoch)
    if best.early_stopping is not None and best.early_stopping.stopped_epoch:
        log(f"stopped early after epoch {best.early_stopping.stopped_epoch + 1}: no better "
            f"validation mAP in {stage2.early_stopping_patience} epochs "
            f"(--early_stopping_patience); best epoch {best.best_epoch}")
    return best
