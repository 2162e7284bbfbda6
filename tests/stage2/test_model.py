import keras
import numpy as np
import pytest

from cfimage.stage2 import model as model_lib


def test_multitask_model_has_named_float32_heads():
    model = model_lib.build_model("efficientnet_b0", "none", (32, 48), num_classes=5,
                                  multi_label=True, cf_dim=7)
    outputs = model(np.zeros((2, 32, 48, 3), np.float32), training=False)
    assert outputs["labels"].shape == (2, 5) and outputs["cf"].shape == (2, 7)
    # sigmoid: scores are independent probabilities, not a distribution
    assert np.all((np.asarray(outputs["labels"]) > 0) & (np.asarray(outputs["labels"]) < 1))
    backbone = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                                 input_shape=(32, 48, 3), pooling="avg")
    # heads: Dense(1280->5) + BN(1280) + Dense(1280->128) + BN(128) + Dense(128->7)
    heads = (1280 * 5 + 5) + 4 * 1280 + (1280 * 128 + 128) + 4 * 128 + (128 * 7 + 7)
    assert model.count_params() == backbone.count_params() + heads


def test_single_label_model_uses_softmax():
    model = model_lib.build_model("efficientnet_v2_b0", None, (32, 32), num_classes=4,
                                  multi_label=False, cf_dim=3)
    scores = np.asarray(model(np.zeros((3, 32, 32, 3)), training=False)["labels"])
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_heads_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = model_lib.build_model("efficientnet_b0", "none", (32, 32), 3, True, 4)
        outputs = model(np.zeros((1, 32, 32, 3), np.float32), training=False)
        assert outputs["labels"].dtype == "float32" and outputs["cf"].dtype == "float32"
        assert model.layers[1].compute_dtype == "float16"  # the backbone
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_bad_backbone_and_weights_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'resnet50'"):
        model_lib.build_backbone("resnet50", None, (32, 32, 3))
    with pytest.raises(ValueError, match="no such file"):
        model_lib.build_backbone("efficientnet_b0", str(tmp_path / "x.weights.h5"), (32, 32, 3))


def test_weights_file_is_loaded(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.EfficientNetB0(include_top=False, weights=None,
                                               input_shape=(32, 32, 3), pooling="avg")
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    keras.utils.set_random_seed(2)
    loaded = model_lib.build_backbone("efficientnet_b0", path, (32, 32, 3))
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(x), source(x), atol=1e-5)


def test_offline_imagenet_download_names_the_lite_backbones(tmp_path, monkeypatch):
    # An unreachable proxy makes the download fail at once, online or not. urllib caches its
    # opener (with the proxies of the moment) on first use: rebuild it now and after the test.
    import urllib.request
    for variable in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    urllib.request.install_opener(None)
    try:
        with pytest.raises(RuntimeError, match="efficientnet_lite0") as error:
            model_lib.build_backbone("efficientnet_b0", "imagenet", (32, 32, 3))
    finally:
        urllib.request.install_opener(None)
    assert "--weights=PATH" in str(error.value)


def test_lite_backbone_plugs_into_the_multitask_model():
    model = model_lib.build_model("efficientnet_lite0", "none", (48, 32), num_classes=3,
                                  multi_label=True, cf_dim=4)
    outputs = model(np.zeros((2, 48, 32, 3), np.float32), training=False)
    assert outputs["labels"].shape == (2, 3) and outputs["cf"].shape == (2, 4)
