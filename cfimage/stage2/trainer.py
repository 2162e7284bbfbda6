"""Stage 2 of a run: the image model built, compiled for its arm (cfimage/stage2/arms.py),
trained (the two_stage arm first pre-trains on the CF targets alone), and the checkpoint of
the epoch with the best validation mAP kept at <workdir>/checkpoints/best.weights.h5.

A killed run resumes: every phase restores its last epoch (BackupAndRestore), a finished
pre-training phase is loaded from its weights file, and the best checkpoint of the
interrupted run is only replaced by a better epoch.
"""

import contextlib
import os

import keras

from cfimage import atomic
from cfimage.errors import UserError
from cfimage.stage2 import fit, losses
from cfimage.stage2 import model as model_lib
from cfimage.stage2.callbacks import select_by_validation_map


def train(catalogue, inputs, cf_dim, stage2, runtime, log=print):
    """Trains the arm of the Stage2Config `stage2` on the Stage2Inputs `inputs`. Returns the
    model (with its last epoch's weights) and the BestCheckpoint record (path, best,
    best_epoch)."""
    arm, outdir = stage2.arm_spec, runtime.outdir
    train_rows = inputs.splits["train"]
    # The model, its optimizer and its metrics are created in the strategy's scope.
    strategy_scope = contextlib.ExitStack()
    strategy_scope.enter_context(runtime.strategy.scope())
    keras.utils.set_random_seed(stage2.seed)  # same initial weights for every arm of a seed
    try:
        model = model_lib.build_model(stage2.backbone, stage2.weights, stage2.image_size,
                                      catalogue.num_classes, inputs.multi_label, cf_dim,
                                      dropout=stage2.dropout)
    except (ValueError, ImportError, FileNotFoundError, RuntimeError) as error:
        raise UserError(str(error)) from None
    log(f"model {model.name}: {model.count_params():,} parameters, image size "
        f"{stage2.image_size}")
    if stage2.sync_batchnorm:
        log(f"synchronised BatchNormalization in {model_lib.synchronize_batchnorm(model)} "
            f"layers, over {runtime.strategy.num_replicas_in_sync} replica(s)")
    steps_per_epoch = -(-len(train_rows) // runtime.global_batch)
    label_loss = (losses.MaskedWeightedBCE(losses.positive_weights(
        catalogue.labels[train_rows], inputs.labelled[train_rows]))
        if inputs.multi_label else losses.MaskedCrossEntropy())

    def compile_for(epochs, label_weight, cf_weight):
        optimizer = fit.make_optimizer(stage2.optimizer, runtime.learning_rate,
                                       stage2.weight_decay, stage2.clipnorm,
                                       epochs * steps_per_epoch)
        fit.compile_model(model, optimizer, label_loss, arm.name, label_weight, cf_weight,
                          runtime.jit_compile, triplet_margin=stage2.triplet_margin)

    checkpoint_dir = os.path.join(outdir, "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    if arm.pretrain:  # phase 1 regresses the CF targets only (label weight 0, λ 1)
        pretrained = os.path.join(checkpoint_dir, "pretrained_cf.weights.h5")
        if os.path.exists(pretrained):
            log(f"two-stage: phase 1 already done, loading {pretrained}")
        else:
            log(f"two-stage: phase 1, {stage2.pretrain_epochs} epochs on the CF targets only")
            compile_for(stage2.pretrain_epochs, 0.0, 1.0)
            fit.resumable_fit(model, inputs.train, inputs.validation, stage2.pretrain_epochs,
                              outdir, "pretrain", log=log, max_loss=stage2.max_loss)
            atomic.save_weights(model, pretrained)
        model.load_weights(pretrained)
    compile_for(stage2.epochs, 1.0, stage2.cf_weight)
    strategy_scope.close()

    resuming = os.path.isdir(os.path.join(outdir, "backup"))
    if resuming:
        log(f"resuming stage 2 from {os.path.join(outdir, 'backup')}")
    log(f"stage 2 ({arm.name}): {stage2.epochs} epochs of {steps_per_epoch} steps, "
        f"λ = {stage2.cf_weight} (the first step traces the graph and takes a while)")
    callbacks, best = select_by_validation_map(
        inputs.validation, catalogue.labels[inputs.splits["validation"]], catalogue.label_names,
        os.path.join(checkpoint_dir, "best.weights.h5"), resuming, log=log)
    fit.resumable_fit(model, inputs.train, inputs.validation, stage2.epochs, outdir, "",
                      callbacks=callbacks, log=log, max_loss=stage2.max_loss)
    return model, best
