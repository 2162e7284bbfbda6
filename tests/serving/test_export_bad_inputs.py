"""Bad requests to the exported SavedModel, loaded in this process with tf.saved_model.load
(TF Serving runs the same graph; the fresh-process checks are in test_signatures.py): a
decompression bomb in every format, to every image signature."""

import numpy as np
import pytest
import tensorflow as tf

from cfimage.serving import export
from tests.stage2.test_data_bad_inputs import BOMB, FORMATS, claim_size, encode

SIZE = (24, 16)
CF_DIM = 4
IMAGE_SIGNATURES = ["serving_default", "embed", "similar_items", "audience"]


def _tiny_model():
    """Labels and cf heads on the flattened pixels: every pixel moves the scores, so a
    rotated image scores differently."""
    import keras
    keras.utils.set_random_seed(0)
    pixels = keras.Input((*SIZE, 3))
    features = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(pixels))
    return keras.Model(pixels, {
        "labels": keras.layers.Dense(3, activation="sigmoid", name="labels")(features),
        "cf": keras.layers.Dense(CF_DIM, name="cf")(features)})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = _tiny_model()
    rng = np.random.default_rng(0)
    path = export.export_saved_model(
        model, ["a", "b", "c"], SIZE, str(tmp_path_factory.mktemp("export")), "tiny",
        cf_scaling={"mean": [0.0] * CF_DIM, "scale": 1.0},
        item_ids=["sku-0", "sku-1"], item_vectors=rng.normal(size=(2, CF_DIM)),
        user_ids=["u0", "u1"], user_vectors=rng.normal(size=(2, CF_DIM)), log=lambda m: None)
    return model, tf.saved_model.load(path).signatures


def _pixels(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


@pytest.mark.parametrize("kind", FORMATS)
def test_a_bomb_header_is_refused_by_every_image_signature(served, kind):
    _, signatures = served
    fine = encode(kind, _pixels(30, 20))
    bomb = claim_size(kind, fine, *BOMB[kind])
    for name in IMAGE_SIGNATURES:
        with pytest.raises(tf.errors.InvalidArgumentError, match="image too large: its header "
                           "claims more than 178,956,970 pixels"):
            signatures[name](images=tf.constant([fine, bomb]))
        assert all(v.shape[0] == 1 for v in signatures[name](images=tf.constant([fine])).values())


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_tagged_phone_jpeg_is_served_upright(served, orientation):
    from tests.stage2.test_data_bad_inputs import tagged_jpeg, upright_scene
    _, signatures = served
    scene = upright_scene(*SIZE)
    tagged = signatures["serving_default"](images=tf.constant([tagged_jpeg(orientation, scene)]))
    upright = signatures["predict_pixels"](pixels=tf.constant(scene[None], tf.float32))
    np.testing.assert_allclose(tagged["scores"].numpy(), upright["scores"].numpy(), atol=0.03)
    # Served as stored, the same image scores differently: the test can tell.
    stored = tf.io.decode_jpeg(tagged_jpeg(orientation, scene)).numpy()[None]
    as_stored = signatures["predict_pixels"](pixels=tf.constant(stored, tf.float32))
    assert np.abs(as_stored["scores"].numpy() - upright["scores"].numpy()).max() > 0.05


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused(served, value):
    _, signatures = served
    pixels = np.full((2, *SIZE, 3), 100.0, np.float32)
    pixels[1, 3, 4, 1] = value
    with pytest.raises(tf.errors.InvalidArgumentError, match="pixels must be finite RGB values "
                       r"\(0-255\), not NaN or inf"):
        signatures["predict_pixels"](pixels=tf.constant(pixels))
    # Any size: the check comes before the resize.
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be finite"):
        signatures["predict_pixels"](pixels=tf.constant(pixels[:, :7, :9]))
    scores = signatures["predict_pixels"](pixels=tf.constant(pixels[:1]))["scores"].numpy()
    assert np.isfinite(scores).all()


@pytest.mark.parametrize("name", IMAGE_SIGNATURES + ["predict_pixels"])
def test_an_empty_batch_is_refused_with_a_message_about_it(served, name):
    _, signatures = served
    if name == "predict_pixels":
        request = {"pixels": tf.zeros([0, *SIZE, 3])}
    else:
        request = {"images": tf.constant([], tf.string)}
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        signatures[name](**request)
    message = error.value.message
    assert "empty batch: the request has no" in message and "send at least one" in message
    assert "Incompatible shapes" not in message
