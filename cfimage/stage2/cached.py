"""Stage 2 on cached backbone features (--train_backbone=false), then optional fine-tuning.

Phase 1, heads: the backbone's pooled features of every image are computed once per view and
cached (cfimage/stage2/features.py, under --feature_cache), and only the adapter and heads
(model.build_heads) train on them, with the arm's losses, masks, confidence weights and
validation-mAP checkpoint selection of end-to-end training (the helpers of trainer.py).

Views and augmentation: end-to-end training flips and crops each image at random. Cached
features exist for two views, "plain" and "flip" (mirrored); a training example takes one of
them at random, anew every epoch (the flip of end-to-end training; random crops have no cached
equivalent). Validation and test read the plain view: what the exported model computes for an
image, so the validation mAP that chooses the checkpoint, and the test mAP, are those of the
export.

Phase 2, fine-tuning (--finetune_epochs > 0), the keras-io EfficientNet recipe: the backbone
is unfrozen (--unfreeze=all|top_blocks:N; BatchNorm stays frozen) and the composed model
(backbone + heads, model.compose) trains end to end on the images at
--finetune_learning_rate, starting from the heads of the best phase-1 epoch. Its epochs
continue phase 1's numbering, and the checkpoint is chosen on validation mAP over both
phases: at the switch, checkpoints/best.weights.h5 becomes the whole model at that epoch.

Export: the composed model, whose backbone is the very network the features were extracted
with (with --weights=none, rebuilt from features.RANDOM_BACKBONE_SEED and checked against the
cache), takes image bytes like an end-to-end model.
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf

from cfimage import atomic
from cfimage.errors import UserError
from cfimage.stage2 import data, features, hybrid, trainer
from cfimage.stage2 import model as model_lib
from cfimage.stage2.metrics import evaluate_scores

VIEWS = ("plain", "flip")  # plain first: evaluation reads it


def feature_dataset(view_features, targets, batch_size, training, seed=0):
    """Batches of (features (B, d), targets) from `view_features` (n, V, d), plain view first.
    Order, as data.batch_examples: shuffle -> pick a view -> batch -> prefetch. Training picks
    each example's view at random every epoch; evaluation takes the plain view."""
    dataset = tf.data.Dataset.from_tensor_slices((view_features.astype(np.float32), targets))
    if training:
        num_views = view_features.shape[1]
        dataset = dataset.shuffle(len(view_features), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda example, s: (example[0][tf.random.stateless_uniform(
                [], s, 0, num_views, dtype=tf.int32)], example[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    else:
        dataset = dataset.map(lambda views, y: (views[0], y))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def extract(catalogue, stage2, backbone, log=print):
    """Every item's features, (num_items, len(VIEWS), d), read from or written to
    stage2.feature_cache; and the features.ViewFeatures counts (computed, reused)."""
    started = time.time()
    try:
        result = features.per_view(stage2.feature_cache, catalogue.image_paths, stage2.backbone,
                                   stage2.weights, stage2.image_size, VIEWS,
                                   extractor_model=backbone, log=log)
    except OSError as error:
        raise UserError(f"--feature_cache={stage2.feature_cache}: {error}") from None
    log(f"features: {result.computed} image-views computed, {result.reused} reused from "
        f"{stage2.feature_cache} in {time.time() - started:.1f} s")
    stacked = np.stack([result.views[view] for view in VIEWS], axis=1)
    return stacked, result


def check_backbone(backbone, image_paths, plain_features, image_size, cache):
    """The export's backbone must reproduce the cached features (a cache written by another
    network with the same key, e.g. another Keras version's random initialisation, would
    otherwise make the export disagree with training). Checks two images."""
    pixels = np.stack([data.decode_and_resize(tf.io.read_file(path), image_size).numpy()
                       for path in image_paths[:2]]).astype(np.float32)
    fresh = np.asarray(backbone(pixels, training=False), np.float32)
    cached = plain_features[:2]
    scale = float(np.abs(cached).max()) or 1.0
    if not np.allclose(fresh, cached, rtol=1e-3, atol=1e-3 * scale):
        raise UserError(f"the cached features in {cache} were not computed by this backbone "
                        f"(largest difference {np.abs(fresh - cached).max():.3g} at scale "
                        f"{scale:.3g}): delete that directory, or use another --feature_cache")


def train(catalogue, inputs, cf_dim, stage2, runtime, log=print):
    """trainer.train for --train_backbone=false: heads on cached features, then the optional
    fine-tuning phase. Returns a trainer.Stage2Result."""
    arm, outdir = stage2.arm_spec, runtime.outdir
    checkpoint_dir = os.path.join(outdir, "checkpoints")
    os.makedirs(checkpoint_dir, exist_ok=True)
    finetuning = os.path.isdir(os.path.join(outdir, "backup_finetune"))  # resume phase 2

    # --- The backbone (the export's), features of every item from the cache ---------
    with runtime.strategy.scope():
        try:
            backbone = features.extraction_backbone(stage2.backbone, stage2.weights,
                                                    stage2.image_size)
        except trainer.BUILD_ERRORS as error:
            raise UserError(str(error)) from None
    view_features, extracted = extract(catalogue, stage2, backbone, log)
    check_backbone(backbone, catalogue.image_paths, view_features[:, 0], stage2.image_size,
                   stage2.feature_cache)

    # --- The heads model, and the composed model that shares its heads ---------------
    keras.utils.set_random_seed(stage2.seed)  # same initial heads for every arm of a seed
    with runtime.strategy.scope():
        heads = model_lib.build_heads(view_features.shape[2], catalogue.num_classes,
                                      inputs.multi_label, cf_dim, stage2.dropout,
                                      stage2.adapter_units, hybrid=arm.cf_input,
                                      cf_input_dropout=stage2.cf_input_dropout)
        serving = model_lib.compose(backbone, heads, name=f"cfimage_{stage2.backbone}")
    log(f"heads on cached {stage2.backbone} features ({view_features.shape[2]} dims): "
        f"{heads.count_params():,} parameters (adapter units {stage2.adapter_units})")
    trainer.sync_batchnorm(serving, stage2, runtime, log)

    def split(name, training):
        rows = inputs.splits[name]
        batches = feature_dataset(view_features[rows], {k: v[rows] for k, v in
                                                        inputs.targets.items()},
                                  runtime.global_batch, training, stage2.seed)
        if not arm.cf_input:
            return batches
        # Hybrid: validation (which chooses the checkpoint) in the cold view, as inputs.py.
        return hybrid.with_cf_input(batches, "features", cold=name == "validation")

    train_ds, validation_ds, test_ds = (split("train", True), split("validation", False),
                                        split("test", False))
    steps_per_epoch = -(-len(inputs.splits["train"]) // runtime.global_batch)
    loss = trainer.label_loss(catalogue, inputs)
    summary = {"train_backbone": False, "adapter_units": stage2.adapter_units,
               "feature_cache": stage2.feature_cache, "feature_dim": int(view_features.shape[2]),
               "feature_views": list(VIEWS), "features_computed": extracted.computed,
               "features_reused": extracted.reused, "heads_epochs": stage2.epochs,
               "finetune_epochs": stage2.finetune_epochs, **trainer.hybrid_summary(stage2),
               **trainer.distill_summary(stage2, inputs)}

    # --- Phase 1: the heads on cached features -------------------------------------
    if not finetuning:
        with runtime.strategy.scope():
            if arm.pretrain:
                trainer.pretrain(heads, train_ds, validation_ds, stage2, runtime, loss,
                                 steps_per_epoch, os.path.join(
                                     checkpoint_dir, "pretrained_cf_heads.weights.h5"), log)
            trainer.compile_phase(heads, stage2, runtime, loss, stage2.epochs * steps_per_epoch,
                                  1.0, stage2.cf_weight)
        log(f"stage 2 ({arm.name}, heads on cached features): {stage2.epochs} epochs of "
            f"{steps_per_epoch} steps, λ = {stage2.cf_weight} (the first step traces the "
            "graph and takes a while)")
        best = trainer.fit_selected(heads, train_ds, validation_ds, catalogue, inputs, stage2,
                                    runtime, stage2.epochs,
                                    os.path.isdir(os.path.join(outdir, "backup")), log=log)
        if not stage2.finetune_epochs:
            return trainer.Stage2Result(heads, best, test_ds, serving,
                                        {**summary, "best_phase": "heads"})
        summary["finetune_start_validation_map"] = start_finetune(
            heads, serving, best, inputs.validation,
            catalogue.labels[inputs.splits["validation"]], catalogue.label_names, log)

    # --- Phase 2: fine-tuning, the backbone unfrozen ------------------------------------
    unfrozen = model_lib.unfreeze(backbone, stage2.unfreeze)
    learning_rate = runtime.learning_rate * stage2.finetune_learning_rate / stage2.learning_rate
    with runtime.strategy.scope():
        trainer.compile_phase(serving, stage2, runtime, loss,
                              stage2.finetune_epochs * steps_per_epoch, 1.0, stage2.cf_weight,
                              learning_rate=learning_rate)
    trainable = sum(int(np.prod(w.shape)) for w in backbone.trainable_weights)
    log(f"fine-tuning ({stage2.unfreeze}: {len(unfrozen)} blocks, {unfrozen[0]}..{unfrozen[-1]}"
        f", {trainable:,} backbone parameters; BatchNorm frozen): {stage2.finetune_epochs} "
        f"epochs from epoch {stage2.epochs + 1}, learning rate {learning_rate:g}")
    best = trainer.fit_selected(serving, inputs.train, inputs.validation, catalogue, inputs,
                                stage2, runtime, stage2.finetune_epochs, True, tag="finetune",
                                initial_epoch=stage2.epochs, log=log)
    summary.update(unfreeze=stage2.unfreeze, unfrozen_blocks=unfrozen,
                   finetune_learning_rate=learning_rate,
                   best_phase="finetune" if best.best_epoch > stage2.epochs else "heads")
    return trainer.Stage2Result(serving, best, inputs.test, serving, summary)


def start_finetune(heads, serving, best, validation, labels, label_names, log=print):
    """The switch to phase 2: loads the heads of the best phase-1 epoch (`best`, a
    BestCheckpoint of `heads`), measures the composed model's validation mAP through the
    backbone (it equals best.best: same network, same plain images), and replaces the best
    checkpoint by the whole model's weights, so that selection goes on over both phases.
    Returns that validation mAP."""
    heads.load_weights(best.path)
    start = validation_map(serving, validation, labels, label_names)
    log(f"fine-tuning starts from the heads of epoch {best.best_epoch}: validation mAP "
        f"{best.best:.4f} on cached features, {start:.4f} through the backbone")
    atomic.save_weights(serving, best.path)
    return start


def validation_map(model, dataset, labels, label_names):
    """Macro mAP of `model`'s label scores on `dataset` (aligned with `labels`)."""
    scores = model.predict(dataset, verbose=0)["labels"]
    return evaluate_scores(labels, scores, label_names)["macro_map"]
