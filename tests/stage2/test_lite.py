"""Tests of cfimage.stage2.lite: architecture, weight files, and the PyTorch -> Keras conversion."""

import glob
import importlib
import os

import cfimage  # noqa: F401  (sets the environment before TensorFlow is imported)
import keras
import numpy as np
import pytest

from cfimage.stage2 import lite
from tests.conftest import movielens_dir

# ImageNet classes that movie posters tend to fall into (a sanity print, not an assert).
POSTER_CLASSES = {916: "web site", 917: "comic book", 921: "book jacket"}

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(
    torch is None, reason="torch is not installed (pip install 'cfimage[lite]'); the "
    "conversion is checked against the PyTorch reference model")


def _images(size, count=8):
    """`count` RGB float32 images in [0, 255]: real posters when $CFIMAGE_MOVIELENS_DIR names
    the MovieLens posters catalogue, stand-ins otherwise."""
    root = movielens_dir()
    posters = os.path.join(root, "posters", "ml1m") if root else None
    paths = sorted(glob.glob(os.path.join(posters, "*.jpg")))[:count] if posters else []
    if paths:
        from PIL import Image
        return np.stack([
            np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR))
            for path in paths]).astype("float32")
    # Deterministic stand-ins: smooth colour gradients plus noise, all in [0, 255].
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, size, dtype="float32")
    images = []
    for _ in range(count):
        colours = rng.uniform(0, 255, size=(2, 3)).astype("float32")
        gradient = ramp[:, None, None] * colours[0] + ramp[None, :, None] * colours[1]
        noise = rng.normal(0, 20, size=(size, size, 3))
        images.append(np.clip(gradient / 2 + noise, 0, 255))
    return np.stack(images).astype("float32")


def _block_torch_import(monkeypatch):
    """Makes cfimage.stage2.lite's lazy `importlib.import_module("torch")` fail as if not
    installed."""
    real_import = importlib.import_module

    def import_without_torch(module, *args, **kwargs):
        if module == "torch":
            raise ModuleNotFoundError("No module named 'torch'")
        return real_import(module, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", import_without_torch)


def test_lite0_with_top_has_the_reference_parameter_count():
    model = lite.efficientnet_lite("efficientnet_lite0", include_top=True)
    # 4,694,024 = every tensor of the .pth except num_batches_tracked: 4,652,008 trainable
    # weights plus 42,016 BatchNormalization moving means/variances (2 x 21,008 channels).
    # The input normalisation is a Rescaling layer without weights, so it adds nothing.
    assert model.count_params() == 4_694_024
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 4_652_008
    assert model.get_layer("normalization").count_params() == 0


def test_features_are_1280_d_at_any_size_and_under_mixed_precision():
    images = _images(96, count=2)[:, :, :64]  # 96 x 64, not square, not 224
    model = lite.efficientnet_lite("efficientnet_lite0", input_shape=(96, 64, 3))
    features = model.predict(images, verbose=0)
    assert features.shape == (2, 1280)
    assert np.all(np.isfinite(features)) and np.all(features >= 0)  # ReLU6 before pooling
    feature_map = lite.efficientnet_lite("efficientnet_lite0", input_shape=(None, None, 3),
                                         pooling=None)
    assert feature_map.predict(images, verbose=0).shape == (2, 3, 2, 1280)  # stride 32

    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = lite.efficientnet_lite("efficientnet_lite0", input_shape=(96, 64, 3),
                                       include_top=True, classes=7)
        outputs = mixed.predict(images, verbose=0)
        assert mixed.get_layer("top_conv").compute_dtype == "float16"
        assert outputs.dtype == np.float32 and outputs.shape == (2, 7)  # float32 head
        np.testing.assert_allclose(outputs.sum(axis=1), 1.0, rtol=1e-5)  # softmax default
    finally:
        keras.config.set_dtype_policy(previous)


def test_weights_path_round_trips_without_the_top(tmp_path):
    full = lite.efficientnet_lite("efficientnet_lite0", include_top=True)
    path = str(tmp_path / "lite0.weights.h5")
    full.save_weights(path)

    backbone = lite.efficientnet_lite("efficientnet_lite0", input_shape=(96, 64, 3),
                                      weights=path)
    backbone_weights = {w.path: w.numpy() for w in backbone.weights}
    full_weights = {w.path: w.numpy() for w in full.weights}
    assert set(backbone_weights) == set(full_weights) - {"predictions/kernel",
                                                         "predictions/bias"}
    for name, value in backbone_weights.items():
        np.testing.assert_array_equal(value, full_weights[name], err_msg=name)

    again = lite.efficientnet_lite("efficientnet_lite0", include_top=True, weights=path)
    images = _images(224, count=2)
    np.testing.assert_allclose(again.predict(images, verbose=0),
                               full.predict(images, verbose=0), atol=1e-6)


def test_bad_arguments_and_files_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="valid: efficientnet_lite0"):
        lite.efficientnet_lite("efficientnet_lite9")
    with pytest.raises(ValueError, match="pooling"):
        lite.efficientnet_lite("efficientnet_lite0", pooling="mean")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        lite.efficientnet_lite("efficientnet_lite0", weights=str(tmp_path / "missing.weights.h5"))

    other = str(tmp_path / "lite1.weights.h5")
    lite.efficientnet_lite("efficientnet_lite1", include_top=True).save_weights(other)
    with pytest.raises(ValueError, match="another variant"):
        lite.efficientnet_lite("efficientnet_lite0", weights=other)

    # Without torch, weights="imagenet" says what to install and what the alternative is.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    _block_torch_import(monkeypatch)
    with pytest.raises(ImportError) as error:
        lite.efficientnet_lite("efficientnet_lite0", weights="imagenet")
    assert "pip install 'cfimage[lite]'" in str(error.value)
    assert "torch==2.13.0" in str(error.value)
    assert "weights=PATH" in str(error.value)


@needs_torch
@pytest.mark.slow  # torch and a full-resolution model: 10-30 s per variant here
@pytest.mark.parametrize("name", sorted(lite.LITE_VARIANTS))
def test_converted_weights_give_the_pytorch_logits(name, tmp_path, monkeypatch, capsys):
    from efficientnet_lite_pytorch import EfficientNet

    # weights="imagenet" converts into $KERAS_HOME/models once, then loads from there.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    _, _, resolution, _ = lite.LITE_VARIANTS[name]
    model = lite.efficientnet_lite(name, input_shape=(resolution, resolution, 3),
                                   include_top=True, weights="imagenet",
                                   classifier_activation=None)
    cached = tmp_path / "models" / lite._cached_file_name(name)
    assert cached.is_file()
    assert "converting" in capsys.readouterr().out
    # Once converted, the cached file serves without torch and without a second conversion.
    with monkeypatch.context() as patch:
        _block_torch_import(patch)
        lite.efficientnet_lite(name, input_shape=(64, 64, 3), weights="imagenet")
    assert "converting" not in capsys.readouterr().out

    images = _images(resolution)
    logits = model.predict(images, verbose=0)

    _, checkpoint = lite._import_checkpoint(name)
    reference = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=checkpoint)
    reference.eval()
    normalised = (images - lite.PIXEL_MEAN) / lite.PIXEL_STDDEV
    with torch.no_grad():
        expected = reference(torch.from_numpy(normalised.transpose(0, 3, 1, 2))).numpy()

    top1 = logits.argmax(axis=1)
    print(name, "top-1:", [POSTER_CLASSES.get(int(i), int(i)) for i in top1],
          "max |diff|:", float(np.abs(logits - expected).max()))
    np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=0)
    np.testing.assert_array_equal(top1, expected.argmax(axis=1))


def test_random_weights_follow_keras_random_seed():
    # The initial weights of a Lite backbone without weights follow keras.utils.set_random_seed:
    # the same seed gives the same backbone (in any process), another seed another one.
    def first_kernel(seed):
        keras.utils.set_random_seed(seed)
        return lite.efficientnet_lite("efficientnet_lite0", input_shape=(32, 32, 3)) \
            .get_weights()[0]

    np.testing.assert_array_equal(first_kernel(0), first_kernel(0))
    assert not np.array_equal(first_kernel(0), first_kernel(1))
