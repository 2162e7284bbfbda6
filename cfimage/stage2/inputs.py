"""Stage 2's inputs of a run: CF targets, split and label masking, CF-loss weights of the arm,
and the train/validation/test datasets (decoded images cached in memory, or TFRecord shards
when they would not fit). Cached-feature training (cfimage/stage2/cached.py) builds its
feature datasets from the same splits and `targets`; it needs the image datasets only to
fine-tune.

Hybrid arms (cfimage/stage2/hybrid.py): the targets also hold each item's CF input, and the
datasets give the model {"pixels", "cf_input"}: training and test with the items' vectors,
validation in the cold view (CF input zeroed), which chooses the checkpoint.

Distill arms (cfimage/stage2/distill.py): a CF → labels teacher is fit on the labelled training
items with a CF vector (never on validation or test items); its soft labels for every training
item with a vector ride in the label targets, which the distill label loss reads."""

import dataclasses
import os

import numpy as np

from cfimage import atomic
from cfimage.errors import UserError
from cfimage.stage2 import arms, confidence, data, distill, hybrid, tfrecords
from cfimage.stage2 import cf_targets as cf_targets_lib


@dataclasses.dataclass
class Stage2Inputs:
    splits: dict  # "train"/"validation"/"test" -> item rows
    labelled: np.ndarray  # (num_items,) bool: labels kept after --label_ratio masking
    multi_label: bool
    cf_scaling: dict  # how the CF vectors were centred and scaled into targets
    targets: dict  # every item's packed targets (data.pack_targets), rows as the catalogue's
    train: object  # tf.data.Dataset of (pixels, {"labels", "cf"}) batches; None when stage 2
    validation: object  # reads no images (cached features without fine-tuning)
    test: object
    # The keras loss of --cf_loss (cfimage/stage2/losses.py); None: the arm's own.
    cf_loss: object = None
    # Distill arms: how the teacher was fit (distill.fit_teacher's summary); None otherwise.
    teacher: dict = None


def prepare(catalogue, vectors, has_vector, stage2, cf_target_scale, task, global_batch,
            outdir, count_interactions, log=print, cf_target="standardised", load_users=None):
    """The Stage2Inputs of a run with the Stage2Config `stage2` (cfimage/config.py).
    `count_interactions()` gives the interactions per item, called only for sqrt weights or
    --cf_loss_min_interactions; `load_users()` stage 1's user vectors (or None), called only
    for --cf_loss=score. `cf_target` is --cf_target (cfimage/stage2/cf_targets.py)."""
    multi_label = catalogue.is_multi_label(task)

    # Split and label masking (one seed: every arm of a seed sees the same ones).
    try:
        splits = data.split_items(catalogue.num_items, catalogue.labelled, stage2.split,
                                  stage2.seed)
    except ValueError as error:  # too few labelled items for validation and test
        raise UserError(f"--split={','.join(str(f) for f in stage2.split)}: {error}") from None
    train_rows = splits["train"]
    labelled = data.mask_labels(catalogue.labelled, train_rows, stage2.label_ratio, stage2.seed)
    log(f"split (seed {stage2.seed}): train {len(train_rows)} "
        f"({int(labelled[train_rows].sum())} labelled, label_ratio {stage2.label_ratio}), "
        f"validation {len(splits['validation'])}, test {len(splits['test'])}")
    for note in data.split_class_notes(catalogue.labels, labelled, splits, catalogue.label_names):
        log(note)

    # CF targets: the --cf_target transform, fit on the training items only.
    cf_targets, cf_scaling = cf_targets_lib.fit(vectors, has_vector, train_rows, cf_target,
                                                cf_target_scale)
    os.makedirs(outdir, exist_ok=True)
    atomic.write_json(os.path.join(outdir, "cf_target.json"), cf_scaling)
    log(f"CF targets ({cf_target}, fit on {cf_scaling['fit_items']} training items): "
        f"{int(has_vector.sum())}/{catalogue.num_items} items have a vector (dim "
        f"{vectors.shape[1]} -> {cf_targets.shape[1]}); the others are masked in the CF loss")

    # The CF loss of the arm: its per-item weights and, for the triplet loss, its positives.
    kind = stage2.cf_confidence
    min_interactions = stage2.cf_loss_min_interactions
    counts = count_interactions() if kind == "sqrt" or min_interactions > 1 else None
    weights = confidence.confidence_weights(
        kind, has_vector, interaction_counts=counts,
        vectors=vectors, labels=catalogue.labels, labelled=labelled, train_rows=train_rows,
        seed=stage2.seed)
    if min_interactions > 1:  # the arm's own item filter, on top of stage 1's
        kept = has_vector & (counts >= min_interactions)
        weights = np.where(kept, weights, 0.0).astype(np.float32)
        log(f"CF loss on items with >= {min_interactions} interactions "
            f"(--cf_loss_min_interactions): {int(kept[train_rows].sum())}/"
            f"{int(has_vector[train_rows].sum())} training items with a vector")
    if kind != "uniform":
        log(f"CF confidence weights ({kind}): training items "
            f"{weights[train_rows][has_vector[train_rows]].min():.2f}.."
            f"{weights[train_rows].max():.2f}, mean "
            f"{weights[train_rows][has_vector[train_rows]].mean():.2f}")
    cf_for_loss = cf_targets
    if stage2.arm_spec.cf_loss == arms.TRIPLET:  # the target is the nearest CF neighbour's vector
        neighbours = data.nearest_cf_neighbours(cf_targets, has_vector)
        cf_for_loss = np.where(neighbours[:, None] >= 0, cf_targets[neighbours], 0.0)
        weights = np.where(neighbours >= 0, weights, 0.0).astype(np.float32)
    targets = data.pack_targets(catalogue.labels, labelled, cf_for_loss, weights)
    cf_loss = make_cf_loss(stage2, cf_scaling, load_users)
    if stage2.arm_spec.cf_input:
        targets[hybrid.CF_INPUT] = hybrid.cf_inputs(cf_targets, has_vector)
        log(f"hybrid: the items' own CF vectors are an input, zeroed for "
            f"{stage2.cf_input_dropout:.0%} of the training items each step; the checkpoint "
            "is chosen on validation mAP with the CF input withheld (cold view)")

    teacher = None
    if stage2.arm_spec.distill:
        targets["labels"], teacher = distill_targets(
            targets["labels"], vectors, has_vector, catalogue.labels, labelled, train_rows,
            multi_label, stage2, outdir, log)

    if not (stage2.train_backbone or stage2.finetune_epochs):
        return Stage2Inputs(splits, labelled, multi_label, cf_scaling, targets, None, None, None,
                            cf_loss=cf_loss, teacher=teacher)
    shards = stage2.tfrecords or _shards_when_too_big(catalogue, targets, stage2, outdir, log)

    def dataset(name, training):
        index = splits[name]
        if shards:  # images from the shards, targets of this run (by item_id)
            batches = tfrecords.make_dataset(shards, stage2.image_size, global_batch, training,
                                             stage2.seed, item_ids=catalogue.item_ids[index],
                                             targets={k: v[index] for k, v in targets.items()})
        else:
            batches = data.make_dataset(catalogue.image_paths[index],
                                        {k: v[index] for k, v in targets.items()},
                                        stage2.image_size, global_batch, training=training,
                                        seed=stage2.seed)
        if hybrid.CF_INPUT not in targets:
            return batches
        return hybrid.with_cf_input(batches, "pixels", cold=name == "validation")

    return Stage2Inputs(splits, labelled, multi_label, cf_scaling, targets,
                        dataset("train", True),
                        dataset("validation", False), dataset("test", False), cf_loss=cf_loss,
                        teacher=teacher)


def distill_targets(label_targets, vectors, has_vector, labels, labelled, train_rows,
                    multi_label, stage2, outdir, log=print):
    """A distill arm's label targets with the teacher's soft labels packed in (distill.pack),
    and the teacher's summary, also written to <outdir>/distill_teacher.json. The teacher
    reads the training rows only: the labels of the labelled ones, the vectors of all."""
    try:
        soft, weight, teacher = distill.fit_teacher(vectors, has_vector, labels, labelled,
                                                    train_rows, multi_label, seed=stage2.seed)
    except ValueError as error:
        raise UserError(f"--arm={stage2.arm}: {error}; raise --label_ratio or use another "
                        "arm") from None
    atomic.write_json(os.path.join(outdir, "distill_teacher.json"), teacher)
    log(f"distill teacher ({teacher['link']} on CF vectors, L2 α = {teacher['alpha']:g}, "
        f"{teacher['alpha_from']}): fit on {teacher['fit_items']} labelled training items, "
        f"soft labels for {teacher['soft_label_items']} training items with a vector "
        f"({teacher['unlabelled_soft_label_items']} unlabelled), distillation weight "
        f"{stage2.distill_weight:g}")
    return distill.pack(label_targets, soft, weight), teacher


def make_cf_loss(stage2, cf_scaling, load_users):
    """The keras loss of --cf_loss (None: the arm's own, the paper's reconstruction loss or
    the contrastive arm's triplet loss). score reads stage 1's user vectors (`load_users()`),
    mapped into target space."""
    kind = stage2.cf_loss
    if kind == "paper" or stage2.arm_spec.cf_loss == arms.TRIPLET:
        return None
    from cfimage.stage2 import losses  # Keras 3
    moment = None
    if kind == "score":
        users = load_users() if load_users else None
        if users is None:
            raise UserError("--cf_loss=score matches the scores of stage 1's users, but this "
                            "run has no user vectors (--cf_embeddings without "
                            "--cf_user_embeddings): pass the user table of the same stage-1 "
                            "run as --cf_user_embeddings, or use another --cf_loss")
        moment = losses.user_moment(cf_targets_lib.users_in_target_space(users, cf_scaling))
    return losses.make_cf_loss(kind, stage2.cf_temperature_stage2, moment)


def _shards_when_too_big(catalogue, targets, stage2, outdir, log):
    """TFRecord shards of the decoded images when caching them would pass the memory limit
    (--cache_limit_gb), written once under <workdir>/tfrecords_HxW; else None."""
    limit = (stage2.cache_limit_gb * 2**30 if stage2.cache_limit_gb > 0
             else tfrecords.default_cache_limit())
    needed = tfrecords.cache_bytes(catalogue.num_items, stage2.image_size)
    if needed <= limit:
        return None
    log(f"the decoded images need {needed / 2**30:.2f} GiB, more than the cache limit "
        f"{limit / 2**30:.2f} GiB (--cache_limit_gb): stage 2 streams them from TFRecords")
    return tfrecords.shards_for_run(
        os.path.join(outdir, "tfrecords_{}x{}".format(*stage2.image_size)), catalogue.item_ids,
        catalogue.image_paths, targets, stage2.image_size, catalogue.label_names, log=log)
