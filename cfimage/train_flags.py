"""The flags of `python -m cfimage.train` (one place to read every option) and their bounds.

Grouped as the run proceeds: catalogue -> stage 1 -> stage 2 -> scale -> output.
Flagfiles under configs/ set these; tests/test_config.py checks every flag they use.
Single-flag bounds are absl validators (checked while the flags are parsed); cfimage/config.py
builds the run config from the flags and checks the rest.
"""

import dataclasses
import os
import sys

from absl import app, flags

from cfimage import config as config_lib
from cfimage.catalogue import reader
from cfimage.errors import UserError
from cfimage.stage1.scan import StreamConfig
from cfimage.stage1.two_tower import TwoTowerConfig
from cfimage.stage2 import arms, cf_targets

FLAGS = flags.FLAGS
STAGE1 = {field.name: field.default for field in dataclasses.fields(TwoTowerConfig)}


def define_flags(flag_values=flags.FLAGS):
    """Defines the flags of cfimage.train, with their bounds, in `flag_values`: the global
    FLAGS when cfimage.train is imported, a fresh FlagValues in a test."""
    # --- Catalogue ---------------------------------------------------------------
    flags.DEFINE_string("catalogue", None, "Catalogue directory (see README). Default: the "
                        "built-in demo catalogue, generated into <workdir>/demo_catalogue.",
                        flag_values=flag_values)
    flags.DEFINE_integer("demo_seed", 0, "Seed of the generated demo catalogue.",
                         flag_values=flag_values)
    flags.DEFINE_integer("demo_items", 1200, "Number of items of the generated demo catalogue.",
                         flag_values=flag_values)
    flags.DEFINE_integer("demo_users", 400, "Number of users of the generated demo catalogue.",
                         flag_values=flag_values)
    flags.DEFINE_enum("demo_kind", "standard", ["standard", "control"], "Generated demo "
                      "catalogue: standard (the smoke test), or control (the positive control: "
                      "interactions a known function of the image, labels = its shape; "
                      "docs/data.md).", flag_values=flag_values)
    flags.DEFINE_string("items_file", "items.csv", "Items file inside the catalogue.",
                        flag_values=flag_values)
    flags.DEFINE_string("interactions_file", "interactions.csv", "Interactions file.",
                        flag_values=flag_values)
    flags.DEFINE_string("item_id_column", "item_id", "Item id column of the items file.",
                        flag_values=flag_values)
    flags.DEFINE_string("image_column", "image", "Image path column (relative to the catalogue).",
                        flag_values=flag_values)
    flags.DEFINE_string("labels_column", "labels", "Labels column; empty = unlabelled item.",
                        flag_values=flag_values)
    flags.DEFINE_string("label_separator", "|", "Separator between labels.",
                        flag_values=flag_values)
    flags.DEFINE_string("user_id_column", "user_id", "User id column of the interactions file.",
                        flag_values=flag_values)
    flags.DEFINE_string("interaction_item_column", "item_id", "Item id column of interactions.",
                        flag_values=flag_values)
    flags.DEFINE_string("weight_column", "weight", "Optional weight/rating column, used as the "
                        "interaction's loss weight in stage 1 ('' = every interaction weighs 1).",
                        flag_values=flag_values)
    flags.DEFINE_string("timestamp_column", "timestamp", "Optional timestamp column.",
                        flag_values=flag_values)
    flags.DEFINE_integer("min_label_count", 1, "Labels with fewer items are dropped.",
                         flag_values=flag_values)
    flags.DEFINE_list("ignore_labels", [], "Label values that mean 'no label'.",
                      flag_values=flag_values)
    flags.DEFINE_enum("on_bad_image", "fail", ["fail", "skip"], "Unreadable images (missing "
                      "pixels, truncated, not an image): fail, or skip those items (listed in "
                      "<workdir>/skipped_images.csv).", flag_values=flag_values)
    flags.DEFINE_enum("unknown_interaction_items", "fail", ["fail", "keep", "drop"], "Interactions "
                      "on items not in the items file: fail, keep them for stage 1 only, or drop "
                      "them.", flag_values=flag_values)
    flags.DEFINE_boolean("allow_outside_paths", False, "Accept image paths that resolve (after "
                         "symlinks) outside the catalogue directory: absolute paths, '..', links "
                         "out. Off: such a path stops the run with its line.",
                         flag_values=flag_values)

    # --- Stage 1: collaborative item embeddings ----------------------------------
    flags.DEFINE_string("cf_embeddings", None, "Skip stage 1 and use these item vectors (.npz "
                        "with ids/vectors, or .csv item_id,v0,v1,...).", flag_values=flag_values)
    # Defaults: stage 1's own (cfimage/stage1/two_tower.py, TwoTowerConfig).
    flags.DEFINE_integer("cf_dim", STAGE1["embedding_dim"], "Stage-1 vector size (two-tower/SVD "
                         "dimension; mult_vae: its hidden layer, vectors --cf_dim + 1).",
                         flag_values=flag_values)
    flags.DEFINE_integer("cf_epochs", STAGE1["epochs"], "Two-tower epochs.",
                         flag_values=flag_values)
    flags.DEFINE_float("cf_learning_rate", STAGE1["learning_rate"], "Two-tower learning rate "
                       "(Adagrad).", flag_values=flag_values)
    flags.DEFINE_float("cf_temperature", STAGE1["temperature"], "Two-tower softmax temperature.",
                       flag_values=flag_values)
    flags.DEFINE_float("cf_holdout", STAGE1["holdout_fraction"], "Share of each user's "
                       "interactions held out for recall@k.", flag_values=flag_values)
    flags.DEFINE_integer("cf_recall_k", STAGE1["recall_k"], "k of the held-out recall@k report.",
                         flag_values=flag_values)
    flags.DEFINE_integer("cf_min_interactions", STAGE1["min_interactions"], "Items with fewer "
                         "interactions get no CF vector (their CF loss is masked).",
                         flag_values=flag_values)
    flags.DEFINE_enum("cf_model", STAGE1["model"], ["two_tower", "mult_vae", "svd"],
                      "Stage-1 model of the CF vectors: two_tower (TFRS, the default), "
                      "mult_vae (the paper's Mult-VAE with item bias; vectors = decoder rows + "
                      "bias, --cf_dim + 1 numbers) or svd (truncated-SVD item factors); the "
                      "last two need the log in memory (cfimage/stage1/matrix.py).",
                      flag_values=flag_values)
    flags.DEFINE_integer("cf_vae_epochs", STAGE1["vae_epochs"], "mult_vae: epochs.",
                         flag_values=flag_values)
    flags.DEFINE_integer("cf_vae_batch_size", STAGE1["vae_batch_size"], "mult_vae: users per "
                         "batch.", flag_values=flag_values)
    flags.DEFINE_float("cf_vae_learning_rate", STAGE1["vae_learning_rate"], "mult_vae: Adam "
                       "learning rate.", flag_values=flag_values)
    flags.DEFINE_float("cf_vae_beta", STAGE1["vae_beta"], "mult_vae: weight β of the KL term.",
                       flag_values=flag_values)
    flags.DEFINE_integer("cf_vae_latent_dim", STAGE1["vae_latent_dim"], "mult_vae: size of the "
                         "bottleneck (the item vectors have --cf_dim + 1 numbers).",
                         flag_values=flag_values)
    flags.DEFINE_enum("stream_interactions", "auto", ["auto", "true", "false"], "Stage 1 streams "
                      "the interactions with tf.data (cfimage/stage1/stream.py) instead of "
                      "loading them into pandas: for logs larger than memory. "
                      "--interactions_file may then be a glob or a gs:// path (shards with one "
                      "header). auto: stream when it matches several files or over 256 MB.",
                      flag_values=flag_values)
    flags.DEFINE_integer("cf_shuffle_buffer", StreamConfig.shuffle_buffer, "Streaming stage 1: "
                         "rows in the training shuffle buffer (a log sorted by user needs a "
                         "large one, or many shards).", flag_values=flag_values)
    flags.DEFINE_float("cf_target_scale", 0.5, "standardised and pca_whiten CF targets have "
                       "this RMS per dimension (keeps the exponential CF loss in range).",
                       flag_values=flag_values)
    flags.DEFINE_string("cf_target", "standardised", "How CF vectors become the CF head's "
                        "targets, fit on the training items only (cfimage/stage2/"
                        "cf_targets.py): standardised (centred, scaled to --cf_target_scale), "
                        "l2 (unit length), raw (unchanged, the paper's code), or pca_whiten:K "
                        "(top K principal components, whitened).", flag_values=flag_values)
    flags.DEFINE_string("cf_user_embeddings", None, "User vectors (.npz with ids/vectors) of "
                        "the stage-1 run that wrote --cf_embeddings, for --cf_loss=score "
                        "(cfimage.experiment passes its stage 1's).", flag_values=flag_values)

    # --- Stage 2: the image model -------------------------------------------------
    flags.DEFINE_string("backbone", "efficientnet_b0", "EfficientNet backbone: "
                        "efficientnet_b0..b7, efficientnet_v2_b0..b3, efficientnet_v2_s/m/l, "
                        "efficientnet_lite0..2 (ImageNet weights offline, see README).",
                        flag_values=flag_values)
    flags.DEFINE_string("weights", "none", "Backbone weights: none, imagenet, or a weights file.",
                        flag_values=flag_values)
    flags.DEFINE_string("image_size", "64", "Training image size: N or HxW (e.g. 96x64).",
                        flag_values=flag_values)
    flags.DEFINE_integer("batch_size", 32, "Batch size.", flag_values=flag_values)
    flags.DEFINE_integer("epochs", 30, "Training epochs.", flag_values=flag_values)
    flags.DEFINE_enum("optimizer", "adamw", ["adamw", "sgd"], "Optimizer.", flag_values=flag_values)
    flags.DEFINE_float("learning_rate", 3e-3, "Peak learning rate (cosine decay).",
                       flag_values=flag_values)
    flags.DEFINE_float("weight_decay", 1e-5, "Weight decay.", flag_values=flag_values)
    flags.DEFINE_float("clipnorm", 1.0, "Gradient clipping by global norm (0 = off).",
                       flag_values=flag_values)
    flags.DEFINE_float("max_loss", 1e4, "Stage 2 stops (keeping its best checkpoint) when the "
                       "training loss is NaN/inf or its running mean exceeds this (an exploding "
                       "run; 0 = only NaN/inf).", flag_values=flag_values)
    flags.DEFINE_float("dropout", 0.2, "Dropout before the classification layer.",
                       flag_values=flag_values)
    flags.DEFINE_float("cf_weight", 2.0, "λ, weight of the CF loss, for the arms that read it; 0 "
                       "= the image-only baseline.", flag_values=flag_values)
    flags.DEFINE_enum("arm", "multitask", list(arms.ARMS),
                      f"What stage 2 optimises (cfimage/stage2/arms.py): {arms.describe()}.",
                      flag_values=flag_values)
    flags.DEFINE_enum("cf_confidence", "uniform", ["uniform", "sqrt", "loss"], "Per-item weights "
                      "of the CF loss: uniform, sqrt(#interactions), or loss-based (see "
                      "cfimage/stage2/confidence.py); the multitask_* arms fix it.",
                      flag_values=flag_values)
    flags.DEFINE_integer("early_stopping_patience", 0, "Stop a training phase after this many "
                         "epochs without a better validation mAP (Keras EarlyStopping; 0 = "
                         "train every epoch). The checkpoint is still chosen on validation mAP.",
                         flag_values=flag_values)
    flags.DEFINE_enum("cf_loss", "paper", ["paper", "mse", "cosine", "infonce", "score"],
                      "CF loss of the arms that reconstruct the CF vectors (not contrastive): "
                      "paper (exp(MSE + L1) − 1), mse, cosine (1 − cos), infonce (in-batch "
                      "InfoNCE between the CF head's output and the items' CF vectors, "
                      "--cf_temperature_stage2), score (DropoutNet-style: the predicted vector "
                      "scores stage 1's users as the true one does; needs its user vectors).",
                      flag_values=flag_values)
    flags.DEFINE_float("cf_temperature_stage2", 0.1, "--cf_loss=infonce: softmax temperature "
                       "of the cosine similarities.", flag_values=flag_values)
    flags.DEFINE_integer("cf_loss_min_interactions", 0, "Items with fewer interactions than "
                         "this are left out of the CF loss (weight 0) in this arm; unlike "
                         "--cf_min_interactions it does not change stage 1, so cells sharing "
                         "one stage 1 can differ (0 or 1 = keep all).", flag_values=flag_values)
    flags.DEFINE_float("distill_weight", 1.0, "distill arms: weight of the distillation loss "
                       "(the label head against the soft labels of a CF → labels teacher fit on "
                       "the labelled training items, on every training item with a CF vector) "
                       "next to the label loss (weight 1). Other arms ignore it.",
                       flag_values=flag_values)
    flags.DEFINE_integer("pretrain_epochs", 5, "two_stage: epochs of CF-only pre-training.",
                         flag_values=flag_values)
    flags.DEFINE_float("triplet_margin", 0.25, "contrastive: triplet margin (mean squared units).",
                       flag_values=flag_values)
    flags.DEFINE_float("cf_input_dropout", 0.5, "hybrid arms: share of the training items "
                       "whose CF input (vector and has-vector indicator) is zeroed, anew each "
                       "step (DropoutNet-style), so that the model also learns to classify an "
                       "image without a vector. Other arms ignore it.", flag_values=flag_values)
    flags.DEFINE_list("warm_buckets", ["1", "10", "100", "1000"], "Interaction counts that "
                      "bucket the warm test items (those with a CF vector) in metrics.json: "
                      "1,10,100,1000 gives 1-9, 10-99, 100-999 and 1000+ interactions.",
                      flag_values=flag_values)
    flags.DEFINE_float("label_ratio", 1.0, "Share of training items that keep their labels.",
                       flag_values=flag_values)
    flags.DEFINE_list("split", ["0.7", "0.1", "0.2"], "Train, validation, test fractions.",
                      flag_values=flag_values)
    flags.DEFINE_integer("seed", 0, "Seed of the split, label masking and initial weights.",
                         flag_values=flag_values)
    flags.DEFINE_enum("task", "auto", ["auto", "multi_label", "single_label"], "auto: "
                      "multi-label when any item has more than one label.", flag_values=flag_values)
    flags.DEFINE_enum("mixed_precision", "auto", ["auto", "true", "false"], "auto: mixed_float16 "
                      "when a GPU is present, float32 on CPU.", flag_values=flag_values)
    flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA (auto: GPU only).",
                      flag_values=flag_values)

    # --- Stage 2: cached backbone features, two-phase fine-tuning (stage2/cached.py) ---
    flags.DEFINE_boolean("train_backbone", True, "true: the whole image model trains end to "
                         "end. false: the backbone's features are computed once (cached, see "
                         "--feature_cache) and only the adapter and heads train on them; the "
                         "export still takes image bytes (backbone + trained heads).",
                         flag_values=flag_values)
    flags.DEFINE_integer("adapter_units", 0, "Units of a Dense+ReLU+Dropout adapter between "
                         "the backbone features and both heads (0 = none).",
                         flag_values=flag_values)
    flags.DEFINE_string("feature_cache", None, "Directory of cached backbone features "
                        "(default: <workdir>/features). Share one between runs and experiment "
                        "cells of the same images: features are reused while the images and "
                        "the backbone settings are unchanged.", flag_values=flag_values)
    flags.DEFINE_integer("finetune_epochs", 0, "With --train_backbone=false: after the heads "
                         "have trained on cached features, unfreeze the backbone (--unfreeze) "
                         "and train the whole model this many more epochs at "
                         "--finetune_learning_rate (0 = no fine-tuning).",
                         flag_values=flag_values)
    flags.DEFINE_string("unfreeze", "all", "What fine-tuning unfreezes: all, or top_blocks:N "
                        "(the last N MBConv blocks and the head convolution). BatchNorm layers "
                        "stay frozen.", flag_values=flag_values)
    flags.DEFINE_float("finetune_learning_rate", 1e-4, "Peak learning rate of the fine-tuning "
                       "phase (cosine decay; scaled by the replicas like --learning_rate).",
                       flag_values=flag_values)

    # --- Scale: distribution strategy and input from TFRecords ---------------------
    flags.DEFINE_enum("strategy", "auto",
                      ["auto", "one_device", "mirrored", "multi_worker", "tpu"], "Stage-2 "
                      "tf.distribute strategy (cfimage/stage2/distribute.py). auto: mirrored on "
                      ">1 GPU, else none. multi_worker reads TF_CONFIG. --batch_size is per "
                      "replica; the learning rate scales with the replicas.",
                      flag_values=flag_values)
    flags.DEFINE_string("tpu", "", "--strategy=tpu: TPU name or grpc:// address ('' = local).",
                        flag_values=flag_values)
    flags.DEFINE_string("tfrecords", None, "Stage 2 reads images from these TFRecord shards "
                        "(e.g. DIR/items-*, written by scripts/make_tfrecords.py at "
                        "--image_size) instead of decoding and caching the image files: for "
                        "catalogues whose decoded images do not fit in memory.",
                        flag_values=flag_values)
    flags.DEFINE_float("cache_limit_gb", 0.0, "Without --tfrecords, stage 2 caches the decoded "
                       "images in memory (items x H x W x 3 bytes) up to this size; above it, it "
                       "writes them once as TFRecord shards under <workdir>/tfrecords_HxW and "
                       "streams from those. 0 = half of this machine's memory.",
                       flag_values=flag_values)
    flags.DEFINE_boolean("sync_batchnorm", False, "Synchronised BatchNormalization: batch "
                         "statistics over the global batch of all replicas (one all-reduce per "
                         "layer and step). Use it when the per-replica batch is small.",
                         flag_values=flag_values)

    # --- Output -------------------------------------------------------------------
    flags.DEFINE_string("workdir", None, "Run directory (default: runs/<model_name>). Running "
                        "the same command again resumes an interrupted run.",
                        flag_values=flag_values)
    flags.DEFINE_string("export_dir", "saved_models", "Base directory of SavedModel exports.",
                        flag_values=flag_values)
    flags.DEFINE_string("model_name", None, "Export name (default: the catalogue's folder name, "
                        "or cfimage_demo).", flag_values=flag_values)
    flags.DEFINE_boolean("export", True, "Export a SavedModel at the end.", flag_values=flag_values)
    flags.DEFINE_boolean("stage1_only", False, "Stop after stage 1 (CF embeddings in the "
                         "workdir).", flag_values=flag_values)
    flags.DEFINE_integer("threads", 0, "TensorFlow intra- and inter-op threads (0 = default). "
                         "Two runs with one thread each beat one run with two on a 2-core CPU.",
                         flag_values=flag_values)

    # --- Bounds (absl stops the parse with "flag --name=value: message", exit status 1) ---
    bounds = {
        "label_ratio": (lambda value: 0.0 < value <= 1.0,
                        "must be in (0, 1]: the share of training items that keep their labels"),
        "cf_weight": (lambda value: value >= 0, "λ must be >= 0 (0 = the image-only baseline)"),
        "image_size": (lambda text: config_lib.parse_image_size(text) is not None,
                       f"use N or HxW with sides >= {config_lib.MIN_IMAGE_SIDE} and <= "
                       f"{config_lib.MAX_IMAGE_SIDE}, e.g. 96x64 (sides above "
                       f"{config_lib.MAX_IMAGE_SIDE} px are refused: one image would be "
                       "tens of MiB as input and GiBs in activations)"),
        "max_loss": (lambda value: value >= 0, "must be >= 0 (0 = stop only on NaN/inf)"),
        "cache_limit_gb": (lambda value: value >= 0, "must be >= 0 (0 = half the memory)"),
        "cf_target_scale": (lambda value: value > 0, "--cf_target_scale must be > 0."),
        "pretrain_epochs": (lambda value: value >= 1, "must be >= 1"),
        "early_stopping_patience": (lambda value: value >= 0, "must be >= 0 (0 = off)"),
        "cf_target": (lambda text: cf_targets.parse(text) is not None,
                      "use standardised, l2, raw or pca_whiten:K with K >= 1"),
        "cf_temperature_stage2": (lambda value: 1e-3 <= value <= 100, "must be in [0.001, "
                                  "100]"),
        "cf_loss_min_interactions": (lambda value: value >= 0, "must be >= 0 (0 = keep all)"),
        "distill_weight": (lambda value: 0 < value <= 100, "must be in (0, 100]: the weight "
                           "of the distillation loss next to the label loss (weight 1)"),
        "dropout": (lambda value: 0.0 <= value < 1.0, "must be in [0, 1)"),
        "cf_input_dropout": (lambda value: 0.0 <= value <= 1.0, "must be in [0, 1]: the share "
                             "of training items whose CF input is zeroed each step"),
        "learning_rate": (lambda value: value > 0, "must be > 0"),
        "threads": (lambda value: value >= 0, "must be >= 0 (0 = TensorFlow's default)"),
        "adapter_units": (lambda value: value >= 0, "must be >= 0 (0 = no adapter)"),
        "finetune_epochs": (lambda value: value >= 0, "must be >= 0 (0 = no fine-tuning)"),
        "finetune_learning_rate": (lambda value: value > 0, "must be > 0"),
        "unfreeze": (lambda text: config_lib.parse_unfreeze(text) is not None,
                     "use all or top_blocks:N with N >= 1"),
    }
    for name, (check, message) in bounds.items():
        flags.register_validator(name, check, message=message, flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["epochs", "batch_size"], lambda values: min(values.values()) >= 1,
        message="--epochs and --batch_size must be >= 1.", flag_values=flag_values)
    _register_allocation_bounds(flag_values)


def _register_allocation_bounds(flag_values):
    """Upper bounds on the flags that size an allocation, so that a typo (--image_size=10000,
    --batch_size=100000, --cf_dim=1000000) stops the parse instead of allocating GiBs."""
    memory_gb = config_lib.physical_memory_bytes() / 1e9
    bounds = {
        "cf_dim": (lambda value: value <= 1024, "must be <= 1024: the user and item tables "
                   "hold users x dim and items x dim floats (typical: 32-256)"),
        "cf_shuffle_buffer": (lambda value: 1 <= value <= 100_000_000, "must be in [1, 10^8] "
                              "rows: the buffer holds that many rows in memory"),
        "cf_vae_epochs": (lambda value: 1 <= value <= 100_000, "must be in [1, 100000]"),
        "cf_vae_batch_size": (lambda value: 1 <= value <= 65_536, "must be in [1, 65536] "
                              "users: a batch is users x items floats"),
        "cf_vae_learning_rate": (lambda value: 0 < value <= 10, "must be in (0, 10]"),
        "cf_vae_beta": (lambda value: 0 <= value <= 1000, "must be in [0, 1000]"),
        "cf_vae_latent_dim": (lambda value: 1 <= value <= 1024, "must be in [1, 1024]"),
        "cf_recall_k": (lambda value: value <= 10_000, "must be <= 10000: recall@k ranks the "
                        "top k items of every evaluated user"),
        "demo_items": (lambda value: 1 <= value <= 1_000_000, "must be in [1, 10^6]: the demo "
                       "catalogue writes one image per item"),
        "demo_users": (lambda value: 1 <= value <= 1_000_000, "must be in [1, 10^6]"),
        "threads": (lambda value: value <= 1024, "must be <= 1024"),
        "cache_limit_gb": (lambda value: value <= memory_gb,
                           f"must be <= this machine's memory ({memory_gb:.1f} GB): the decoded "
                           "images are cached in memory up to this size"),
    }
    for name, (check, message) in bounds.items():
        flags.register_validator(name, check, message=message, flag_values=flag_values)

    def batch_fits(values):
        size = config_lib.parse_image_size(values["image_size"]) or (1, 1)
        batch = values["batch_size"]
        return batch <= config_lib.MAX_BATCH_SIZE and (
            batch * size[0] * size[1] <= config_lib.MAX_BATCH_PIXELS)

    flags.register_multi_flags_validator(
        ["batch_size", "image_size"], batch_fits, flag_values=flag_values,
        message=f"--batch_size must be <= {config_lib.MAX_BATCH_SIZE:,} and batch x height x "
                f"width <= {config_lib.MAX_BATCH_PIXELS:,} pixels (1.5 GiB of float32 input per "
                "replica, activations tens of times more); lower --batch_size or --image_size")


def check_flagfiles(argv):
    """Every --flagfile in `argv` (and in the flagfiles it names) decodes as UTF-8 text, or
    UserError naming the file and line. absl reads them itself, and a file in another
    encoding stops it with a bare UnicodeDecodeError that does not say which file."""
    pending, seen = list(argv[1:]), set()
    while pending:
        argument = pending.pop(0)
        if not argument.startswith(("--flagfile=", "-flagfile=")):
            continue
        path = argument.split("=", 1)[1]
        if path in seen or not os.path.isfile(path):
            continue  # absl reports a missing flagfile itself, naming it
        seen.add(path)
        try:
            with open(path, "rb") as f:
                lines = list(reader.text_lines(path, f))
        except reader.CatalogueError as error:
            message = str(error).replace("text CSV file", "text file")
            raise UserError(f"flagfile {message.replace('UTF-8 CSV', 'UTF-8 text')}") from None
        except OSError as error:
            raise UserError(f"flagfile {path}: cannot read it ({error.strerror})") from None
        pending.extend(line.strip() for line in lines)


def parse_flags(argv):
    """absl's flag parsing (app.run's flags_parser) after check_flagfiles: a flagfile in
    another encoding is one line on stderr and exit status 1, like any UserError."""
    try:
        check_flagfiles(argv)
    except UserError as error:
        sys.exit(f"cfimage: error: {error}")
    return app.parse_flags_with_usage(argv)


def run_main(main):
    """The entry point of every `python -m cfimage.<command>`: absl's app.run of `main` with
    these flags, and a user's mistake (UserError) as one line on stderr and exit status 1."""
    def main_reporting_user_errors(argv):
        try:
            main(argv)
        except UserError as error:
            sys.exit(f"cfimage: error: {error}")

    app.run(main_reporting_user_errors, flags_parser=parse_flags)


def log(message):
    print(f"[cfimage] {message}", flush=True)


def flagfile_text(flag_values=FLAGS):
    """The effective values of cfimage's own flags (train_flags and the entry point's), one
    per line: a --flagfile that reproduces the run. absl's, TensorFlow's and absl testing's
    flags (e.g. --test_random_seed) are left out: they are not settings of the run."""
    main_module = sys.argv[0]
    lines = set()
    for module, module_flags in flag_values.flags_by_module_dict().items():
        if module.startswith("cfimage") or module in ("__main__", main_module):
            lines.update(flag.serialize() for flag in module_flags)
    return "".join(f"{line}\n" for line in sorted(lines) if line)
