"""The backbone-feature cache: same features as the model's backbone, reused, invalidated."""

import json
import os
import threading
import time

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import keras
import numpy as np
import pytest
import tensorflow as tf

from cfimage.catalogue import demo
from cfimage.stage2 import data, features
from cfimage.stage2 import model as model_lib

SIZE = (32, 40)  # height, width: not square, so a swapped size would show


def _write_images(directory, count, seed=0):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = os.path.join(directory, f"image_{index}.png")
        demo.write_png(path, rng.integers(0, 256, size=(24 + index, 30, 3), dtype=np.uint8))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _write_images(str(tmp_path_factory.mktemp("images")), 5)


def assert_close(actual, expected):
    """Equal up to float32 rounding, relative to the values' scale (a random backbone's
    features are of the order of 1e-6)."""
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def _decoded(paths):
    return np.stack([data.decode_and_resize(tf.io.read_file(p), SIZE).numpy() for p in paths])


def test_cached_features_are_the_models_backbone_output(images, tmp_path):
    keras.utils.set_random_seed(4)
    model = model_lib.build_model("efficientnet_b0", None, SIZE, num_classes=3,
                                  multi_label=True, cf_dim=4)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    weights = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(weights)

    result = features.features(str(tmp_path / "cache"), images, "efficientnet_b0", weights,
                               SIZE, views=("plain", "flip"), log=lambda _: None)

    pixels = _decoded(images).astype(np.float32)
    plain = backbone(pixels, training=False).numpy()
    flipped = backbone(pixels[:, :, ::-1], training=False).numpy()
    assert_close(result.features, (plain + flipped) / 2)
    # The flip view is not the plain one.
    assert np.abs(plain - flipped).max() > 0.05 * np.abs(plain).max()
    # The model's label head on a cached plain feature gives the model's own prediction.
    only_plain = features.features(str(tmp_path / "cache"), images, "efficientnet_b0", weights,
                                   SIZE, views=("plain",), log=lambda _: None)
    assert only_plain.computed == 0
    head = model.get_layer("labels_logits")
    kernel, bias = (w.numpy() for w in head.weights)
    from_cache = 1 / (1 + np.exp(-(only_plain.features @ kernel + bias)))
    assert_close(from_cache, model.predict(pixels, verbose=0)["labels"])


def test_second_call_reuses_and_a_changed_image_is_recomputed(tmp_path):
    paths = _write_images(str(tmp_path / "images"), 4)
    cache = str(tmp_path / "cache")

    def run(image_size=SIZE):
        return features.features(cache, paths, "efficientnet_b0", "none", image_size,
                                 log=lambda _: None)

    first = run()
    assert (first.computed, first.reused) == (8, 0)  # 4 images x 2 views
    again = run()
    assert (again.computed, again.reused) == (0, 8)
    np.testing.assert_array_equal(again.features, first.features)

    demo.write_png(paths[2], np.zeros((50, 50, 3), np.uint8))  # another size of file
    changed = run()
    assert (changed.computed, changed.reused) == (2, 6)
    np.testing.assert_array_equal(changed.features[[0, 1, 3]], first.features[[0, 1, 3]])
    assert not np.allclose(changed.features[2], first.features[2])

    other_size = run(image_size=(40, 32))
    assert other_size.computed == 8  # settings changed: nothing reused
    assert run().computed == 0  # the first size's files are still there
    keys = sorted(f for f in os.listdir(cache) if f.endswith(".json"))
    assert len(keys) == 4 and all(f.startswith("efficientnet_b0_") for f in keys)
    key = json.load(open(os.path.join(cache, keys[0])))
    assert key["settings"]["weights"] == "none (seed 0)"
    assert [row[0] for row in key["images"]] == [os.path.abspath(p) for p in paths]


def test_a_killed_extraction_resumes_and_a_subset_borrows_rows(tmp_path):
    paths = _write_images(str(tmp_path / "images"), 6)
    cache = str(tmp_path / "cache")
    real = features.FeatureExtractor("efficientnet_b0", "none", SIZE)
    calls = []

    def dying_extractor():
        def extract(batch):
            calls.append(len(batch))
            if len(calls) > 2:
                raise KeyboardInterrupt("killed")
            return real(batch)
        return extract

    with pytest.raises(KeyboardInterrupt):
        features.view_features(cache, paths, "efficientnet_b0", "none", SIZE, "plain",
                               batch_size=2, save_every=2, get_extractor=dying_extractor,
                               log=lambda _: None)
    values, computed, reused = features.view_features(cache, paths, "efficientnet_b0", "none",
                                                      SIZE, "plain", batch_size=2,
                                                      log=lambda _: None)
    assert (computed, reused) == (2, 4)  # two batches of two were saved before the kill
    assert_close(values, real(_decoded(paths)))

    subset, computed, reused = features.view_features(cache, paths[1:4], "efficientnet_b0",
                                                      "none", SIZE, "plain", log=lambda _: None)
    assert (computed, reused) == (0, 3)
    np.testing.assert_array_equal(subset, values[1:4])


def test_two_callers_at_once_compute_the_features_once(tmp_path):
    # As two cells that an experiment starts together on a fresh cache: the second waits for
    # the first (a lock file per cache file; two threads hold separate locks, as processes do)
    # and reuses its rows instead of computing them too.
    paths = _write_images(str(tmp_path / "images"), 4)
    cache = str(tmp_path / "cache")
    real = features.FeatureExtractor("efficientnet_lite0", "none", SIZE)
    computing = threading.Event()

    def slow_extractor():
        def extract(batch):
            computing.set()
            time.sleep(1.0)  # the second caller arrives while the first computes
            return real(batch)
        return extract

    first = {}
    thread = threading.Thread(target=lambda: first.update(result=features.view_features(
        cache, paths, "efficientnet_lite0", "none", SIZE, "plain",
        get_extractor=slow_extractor, log=lambda _: None)))
    thread.start()
    assert computing.wait(timeout=120)
    messages = []
    values, computed, reused = features.view_features(
        cache, paths, "efficientnet_lite0", "none", SIZE, "plain",
        get_extractor=lambda: real, log=messages.append)
    thread.join(timeout=120)
    assert first["result"][1:] == (4, 0) and (computed, reused) == (0, 4)
    np.testing.assert_array_equal(values, first["result"][0])
    assert any("another process is computing them; waiting" in line for line in messages)


def test_bad_views_are_refused(images, tmp_path):
    with pytest.raises(ValueError, match="unknown view 'crop'"):
        features.features(str(tmp_path), images, "efficientnet_b0", "none", SIZE,
                          views=("plain", "crop"))
    with pytest.raises(ValueError, match="distinct"):
        features.features(str(tmp_path), images, "efficientnet_b0", "none", SIZE,
                          views=("plain", "plain"))
