"""The run config of `python -m cfimage.train`: built once from the flags, checked before any
work, then read-only. Saved whole as <workdir>/config.json (every effective value, stage 1
included), next to flags.txt (the flags as typed, a reusable --flagfile).

    RunConfig
      catalogue  where the items and interactions are and how to read them
      stage1     the two-tower settings (every TwoTowerConfig field), streaming, CF targets
      stage2     the arm and its λ, the image model, its training, split and scale
      output     workdir, export, threads

Single-flag bounds are absl validators (cfimage/train_flags.py): they stop a bad value while
the flags are parsed. What needs several flags, a lookup (backbone names, weights files) or
stage 1's own checks is checked here and raised as a UserError.
"""

import dataclasses
import json
import os

from cfimage import atomic
from cfimage.catalogue.reader import CatalogueSpec
from cfimage.errors import UserError
from cfimage.stage1.scan import StreamConfig
from cfimage.stage1.two_tower import TwoTowerConfig
from cfimage.stage2 import arms

MIN_IMAGE_SIDE = 32  # EfficientNet's five stride-2 stages leave a 1x1 map at 32 px
# Bounds on what sizes an allocation, checked while the flags are parsed (train_flags.py).
# 1024 px is twice the largest EfficientNet's native size (B7: 600, V2-L: 480): one 1024x1024
# image is 12 MiB as float32 input and ~100x that in activations.
MAX_IMAGE_SIDE = 1024
# Per-replica batch x height x width: 2**27 pixels are 1.5 GiB of float32 input alone (e.g.
# 128 images at 1024x1024, 2,674 at 224x224); the activations need tens of times more.
MAX_BATCH_PIXELS = 2**27
MAX_BATCH_SIZE = 4096


@dataclasses.dataclass(frozen=True)
class CatalogueConfig:
    root: str | None  # None: the demo catalogue, generated into <workdir>/demo_catalogue
    spec: CatalogueSpec
    demo_seed: int
    demo_items: int
    demo_users: int
    demo_kind: str  # standard | control (cfimage/catalogue/demo.py)
    on_bad_image: str  # fail | skip
    stream_interactions: str  # auto | true | false
    task: str  # auto | multi_label | single_label


@dataclasses.dataclass(frozen=True)
class Stage1Config:
    # Treat both as read-only: they are the exact objects stage 1 runs with.
    two_tower: TwoTowerConfig
    stream: StreamConfig
    cf_embeddings: str | None  # the user's own vectors instead of training stage 1
    cf_target_scale: float  # RMS per dimension of standardised / pca_whiten CF targets
    cf_target: str = "standardised"  # the transform of cfimage/stage2/cf_targets.py
    cf_user_embeddings: str | None = None  # user vectors that go with --cf_embeddings


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    arm: str  # a name in cfimage/stage2/arms.py
    cf_weight: float  # λ of the (main) training phase, as the arm's rule gives it
    cf_confidence: str  # the CF-loss weighting the arm trains with
    pretrain_epochs: int  # two_stage: epochs of the CF-only phase
    early_stopping_patience: int  # 0 = every epoch; else stop after this many without a gain
    triplet_margin: float  # contrastive
    cf_input_dropout: float  # hybrid arms: share of training items whose CF input is zeroed
    warm_buckets: tuple  # interaction-count edges of the warm test items' mAP buckets
    backbone: str
    weights: str
    image_size: tuple  # (height, width)
    dropout: float
    batch_size: int  # per replica
    epochs: int
    optimizer: str
    learning_rate: float  # before scaling by the replicas
    weight_decay: float
    clipnorm: float
    max_loss: float
    label_ratio: float
    split: tuple  # train, validation, test fractions
    seed: int
    mixed_precision: str
    jit_compile: str
    strategy: str
    tpu: str
    sync_batchnorm: bool
    tfrecords: str | None
    cache_limit_gb: float
    # Cached-feature training and two-phase fine-tuning (cfimage/stage2/cached.py).
    train_backbone: bool  # False: heads on cached backbone features
    adapter_units: int  # 0 = no adapter between features and heads
    feature_cache: str | None  # absolute; None when the backbone trains end to end
    finetune_epochs: int  # 0 = heads only
    unfreeze: str  # all | top_blocks:N
    finetune_learning_rate: float  # before scaling by the replicas
    # The CF loss (cfimage/stage2/losses.py, make_cf_loss) and its item filter.
    cf_loss: str = "paper"  # paper | mse | cosine | infonce | score
    cf_temperature_stage2: float = 0.1  # infonce
    cf_loss_min_interactions: int = 0  # items with fewer interactions: weight 0 in the CF loss
    distill_weight: float = 0.0  # distill arms: weight of the distillation loss (others: 0)

    @property
    def arm_spec(self):
        return arms.get(self.arm)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    workdir: str  # absolute
    model_name: str
    export_dir: str
    export: bool
    stage1_only: bool
    threads: int


@dataclasses.dataclass(frozen=True)
class RunConfig:
    catalogue: CatalogueConfig
    stage1: Stage1Config
    stage2: Stage2Config
    output: OutputConfig

    def to_dict(self):
        return dataclasses.asdict(self)


def parse_image_size(text):
    """'N' or 'HxW' -> (height, width), or None when it is not one with sides from 32 to
    1024 (MIN_IMAGE_SIDE, MAX_IMAGE_SIDE)."""
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        return None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < MIN_IMAGE_SIDE or max(parts) > MAX_IMAGE_SIDE:
        return None
    return tuple(parts)


def parse_unfreeze(text):
    """--unfreeze: 'all' or 'top_blocks:N' (N >= 1) as given, or None when it is neither."""
    text = str(text)
    if text == "all":
        return text
    kind, _, count = text.partition(":")
    return text if kind == "top_blocks" and count.isdigit() and int(count) >= 1 else None


def physical_memory_bytes():
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_split(values):
    """--split -> three fractions, each > 0, summing to 1 (UserError otherwise)."""
    shown = ",".join(values)
    try:
        fractions = tuple(float(f) for f in values)
    except ValueError:
        fractions = ()
    if len(fractions) != 3:
        raise UserError(f"--split={shown}: give three fractions, e.g. 0.7,0.1,0.2")
    if min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise UserError(f"--split={shown}: train, validation and test fractions must each be "
                        "> 0 and sum to 1, e.g. 0.7,0.1,0.2")
    return fractions


def parse_warm_buckets(values):
    """--warm_buckets -> increasing interaction counts >= 1 (UserError otherwise)."""
    shown = ",".join(str(v) for v in values)
    try:
        edges = tuple(int(v) for v in values)
    except ValueError:
        edges = ()
    if not edges or min(edges) < 1 or list(edges) != sorted(set(edges)):
        raise UserError(f"--warm_buckets={shown}: give increasing interaction counts >= 1, "
                        "e.g. 1,10,100,1000 (buckets 1-9, 10-99, 100-999, 1000+)")
    return edges


def from_flags(flags):
    """The RunConfig of parsed absl `flags` (cfimage/train_flags.py). Raises UserError for a
    value that cannot run, before any data is read or any model trained."""
    # Flag values that were given explicitly and contradict the arm.
    arm = arms.get(flags.arm)
    if (arm.confidence and flags["cf_confidence"].present
            and flags.cf_confidence != arm.confidence):
        raise UserError(f"--arm={arm.name} weighs the CF loss by {arm.confidence!r}, but "
                        f"--cf_confidence={flags.cf_confidence}: drop one (--arm=multitask "
                        "reads --cf_confidence)")
    if flags.strategy == "multi_worker" and not (flags.cf_embeddings or flags.stage1_only):
        raise UserError(
            "--strategy=multi_worker needs --cf_embeddings: stage 1 (TFRS) runs in one "
            "process; run it first with --stage1_only and pass its cf_embeddings.npz "
            "(README, 'Training on several machines')")
    _check_backbone(flags.backbone, flags.weights)
    _check_cached(flags)
    _check_cf_loss(flags, arm)

    two_tower = TwoTowerConfig(
        embedding_dim=flags.cf_dim, epochs=flags.cf_epochs, learning_rate=flags.cf_learning_rate,
        temperature=flags.cf_temperature, holdout_fraction=flags.cf_holdout,
        recall_k=flags.cf_recall_k, min_interactions=flags.cf_min_interactions, seed=flags.seed,
        model=flags.cf_model, vae_epochs=flags.cf_vae_epochs,
        vae_batch_size=flags.cf_vae_batch_size, vae_learning_rate=flags.cf_vae_learning_rate,
        vae_beta=flags.cf_vae_beta, vae_latent_dim=flags.cf_vae_latent_dim)
    try:
        two_tower.validate()
    except ValueError as error:
        raise UserError(f"stage-1 flags (--cf_dim, --cf_holdout, --cf_epochs, ...): "
                        f"{error}") from None

    model_name = flags.model_name or (
        os.path.basename(os.path.normpath(flags.catalogue)) if flags.catalogue
        else "cfimage_demo")
    workdir = os.path.abspath(flags.workdir or os.path.join("runs", model_name))
    feature_cache = (None if flags.train_backbone else
                     os.path.abspath(flags.feature_cache or os.path.join(workdir, "features")))
    return RunConfig(
        catalogue=CatalogueConfig(
            root=flags.catalogue,
            spec=CatalogueSpec(
                items_file=flags.items_file, interactions_file=flags.interactions_file,
                item_id_column=flags.item_id_column, image_column=flags.image_column,
                labels_column=flags.labels_column, label_separator=flags.label_separator,
                user_id_column=flags.user_id_column,
                interaction_item_column=flags.interaction_item_column,
                weight_column=flags.weight_column, timestamp_column=flags.timestamp_column,
                min_label_count=flags.min_label_count,
                ignore_labels=tuple(flags.ignore_labels),
                unknown_interaction_items=flags.unknown_interaction_items,
                allow_outside_paths=flags.allow_outside_paths),
            demo_seed=flags.demo_seed, demo_items=flags.demo_items,
            demo_users=flags.demo_users, demo_kind=flags.demo_kind,
            on_bad_image=flags.on_bad_image,
            stream_interactions=flags.stream_interactions, task=flags.task),
        stage1=Stage1Config(
            two_tower=two_tower, stream=StreamConfig(shuffle_buffer=flags.cf_shuffle_buffer),
            cf_embeddings=flags.cf_embeddings, cf_target_scale=flags.cf_target_scale,
            cf_target=flags.cf_target, cf_user_embeddings=flags.cf_user_embeddings),
        stage2=Stage2Config(
            arm=arm.name, cf_weight=arm.cf_weight(flags.cf_weight),
            cf_confidence=arm.confidence_weighting(flags.cf_confidence),
            pretrain_epochs=flags.pretrain_epochs, triplet_margin=flags.triplet_margin,
            early_stopping_patience=flags.early_stopping_patience,
            cf_input_dropout=flags.cf_input_dropout,
            warm_buckets=parse_warm_buckets(flags.warm_buckets),
            backbone=flags.backbone, weights=flags.weights,
            image_size=parse_image_size(flags.image_size), dropout=flags.dropout,
            batch_size=flags.batch_size, epochs=flags.epochs, optimizer=flags.optimizer,
            learning_rate=flags.learning_rate, weight_decay=flags.weight_decay,
            clipnorm=flags.clipnorm, max_loss=flags.max_loss, label_ratio=flags.label_ratio,
            split=parse_split(flags.split), seed=flags.seed,
            mixed_precision=flags.mixed_precision, jit_compile=flags.jit_compile,
            strategy=flags.strategy, tpu=flags.tpu, sync_batchnorm=flags.sync_batchnorm,
            tfrecords=flags.tfrecords, cache_limit_gb=flags.cache_limit_gb,
            train_backbone=flags.train_backbone, adapter_units=flags.adapter_units,
            feature_cache=feature_cache, finetune_epochs=flags.finetune_epochs,
            unfreeze=flags.unfreeze, finetune_learning_rate=flags.finetune_learning_rate,
            cf_loss=flags.cf_loss, cf_temperature_stage2=flags.cf_temperature_stage2,
            cf_loss_min_interactions=flags.cf_loss_min_interactions,
            distill_weight=arm.distill_weight(flags.distill_weight)),
        output=OutputConfig(
            workdir=workdir,
            model_name=model_name, export_dir=flags.export_dir, export=flags.export,
            stage1_only=flags.stage1_only, threads=flags.threads))


def _check_backbone(backbone, weights):
    from cfimage.stage2 import model as model_lib  # Keras 3: loaded once the flags are read
    if backbone not in model_lib.BACKBONES:
        raise UserError(f"--backbone={backbone}: unknown backbone {backbone!r}; choose one of "
                        f"{', '.join(sorted(model_lib.BACKBONES))}")
    try:
        model_lib.check_weights(weights)
    except ValueError as error:
        raise UserError(str(error)) from None


def _check_cached(flags):
    """What cached-feature training (--train_backbone=false) cannot be combined with."""
    if flags.train_backbone:
        if flags.finetune_epochs:
            raise UserError(f"--finetune_epochs={flags.finetune_epochs} is the second phase of "
                            "--train_backbone=false (heads on cached features first); with "
                            "--train_backbone=true the backbone trains from the start: drop one")
        return
    if flags.tfrecords:
        raise UserError("--train_backbone=false computes backbone features from the image "
                        f"files; it cannot read --tfrecords={flags.tfrecords}: drop one")
    if flags.strategy in ("multi_worker", "tpu"):
        raise UserError(f"--train_backbone=false runs in one process (one feature cache); "
                        f"--strategy={flags.strategy} is not supported with it: use "
                        "--strategy=auto, one_device or mirrored")


def _check_cf_loss(flags, arm):
    """--cf_loss against the arm and the source of the vectors."""
    if flags.cf_loss != "paper" and arm.cf_loss == arms.TRIPLET:
        raise UserError(f"--arm={arm.name} trains a triplet loss on the CF head; "
                        f"--cf_loss={flags.cf_loss} replaces the reconstruction loss of the "
                        "other arms: drop one")
    if (flags.cf_loss == "score" and flags.cf_embeddings and not flags.cf_user_embeddings
            and not flags.stage1_only):
        raise UserError("--cf_loss=score matches the scores of stage 1's users, but "
                        f"--cf_embeddings={flags.cf_embeddings} brings no user vectors: pass "
                        "the user table of the same stage-1 run as --cf_user_embeddings "
                        "(user_embeddings.npz next to its cf_embeddings.npz), or use another "
                        "--cf_loss")
    target_kind = str(flags.cf_target).partition(":")[0]
    if arm.cf_input and target_kind not in ("standardised", "raw"):
        # The export's classify_items builds the CF input in-graph as (v - mean) / scale.
        raise UserError(f"--arm={arm.name} feeds the items' CF vectors to the model; with "
                        f"--cf_target={flags.cf_target} the served input would not match the "
                        "trained one: use --cf_target=standardised or raw with the hybrid arms")
    if flags.cf_user_embeddings and not flags.cf_embeddings:
        raise UserError(f"--cf_user_embeddings={flags.cf_user_embeddings} goes with "
                        "--cf_embeddings (the item vectors of the same stage-1 run); without "
                        "it stage 1 trains and writes its own user vectors: drop it")


def write_workdir(config, flags_text):
    """Creates the workdir; writes flags.txt (the flags as a --flagfile) and config.json."""
    workdir = config.output.workdir
    os.makedirs(workdir, exist_ok=True)
    atomic.write_text(os.path.join(workdir, "flags.txt"), flags_text)
    atomic.write_text(os.path.join(workdir, "config.json"),
                      json.dumps(config.to_dict(), indent=2, sort_keys=False))
