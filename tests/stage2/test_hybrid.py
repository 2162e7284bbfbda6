"""The hybrid arms' model and data (cfimage/stage2/hybrid.py, model.py): the CF input zeroed is
the image path exactly, CF-input dropout, the items' CF inputs, the views and the buckets."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfimage.stage2 import evaluation, hybrid
from cfimage.stage2 import model as model_lib

FEATURES, CLASSES, CF_DIM = 12, 4, 3


def _heads(multi_label=True, dropout=0.5):
    keras.utils.set_random_seed(0)
    heads = model_lib.build_heads(FEATURES, CLASSES, multi_label, CF_DIM, adapter_units=5,
                                  hybrid=True, cf_input_dropout=dropout)
    # Biases away from 0, so that a zero input does not make the CF branch 0 by itself.
    for name in ("cf_input_dense", "cf_input_logits"):
        layer = heads.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, bias + 0.7])
    return heads


def _inputs(n=9, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, FEATURES)).astype(np.float32)
    cf_input = np.concatenate([rng.normal(size=(n, CF_DIM)), np.ones((n, 1))], 1)
    return features, cf_input.astype(np.float32)


@pytest.mark.parametrize("multi_label", [True, False])
def test_cf_input_zeroed_is_exactly_the_image_path(multi_label):
    heads = _heads(multi_label)
    features, cf_input = _inputs()
    zeroed = np.asarray(heads({"features": features, "cf_input": np.zeros_like(cf_input)})[
        "labels"])
    image_only = np.asarray(model_lib.image_path(heads)(features))
    np.testing.assert_array_equal(zeroed, image_only)  # bit for bit, not allclose
    given = np.asarray(heads({"features": features, "cf_input": cf_input})["labels"])
    assert np.abs(given - image_only).min(axis=1).max() > 1e-3  # every item's scores move
    # The CF head never sees the CF input.
    np.testing.assert_array_equal(
        heads({"features": features, "cf_input": cf_input})["cf"],
        heads({"features": features, "cf_input": np.zeros_like(cf_input)})["cf"])


def test_the_composed_model_zeroed_is_the_image_path_too():
    heads = _heads()
    backbone = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(FEATURES, 3),
                                 keras.layers.GlobalAveragePooling2D()], name="tiny")
    composed = model_lib.compose(backbone, heads)
    assert model_lib.is_hybrid(composed) and not model_lib.is_hybrid(backbone)
    pixels = np.random.default_rng(2).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    zeroed = composed({"pixels": pixels, "cf_input": np.zeros((5, CF_DIM + 1), np.float32)})
    np.testing.assert_array_equal(zeroed["labels"], model_lib.image_path(composed)(pixels))


def test_cf_input_dropout_zeroes_whole_rows_in_training_only():
    layer = model_lib.CFInputDropout(0.5, seed=3)
    inputs = np.ones((4000, CF_DIM + 1), np.float32)
    out = np.asarray(layer(inputs, training=True))
    kept = out.any(axis=1)
    assert np.all(out[kept] == 1.0) and np.all(out[~kept] == 0.0)  # no rescaling, whole rows
    assert abs(kept.mean() - 0.5) < 0.03  # 4000 draws: sd 0.008
    assert not np.array_equal(kept, np.asarray(layer(inputs, training=True)).any(axis=1))
    np.testing.assert_array_equal(layer(inputs, training=False), inputs)
    np.testing.assert_array_equal(model_lib.CFInputDropout(0.0)(inputs, training=True), inputs)
    assert not np.asarray(model_lib.CFInputDropout(1.0)(inputs, training=True)).any()


def test_the_dropout_rate_trains_the_image_path_on_its_own():
    """With dropout 1, the CF branch never gets a gradient; with 0 it does."""
    features, cf_input = _inputs(32)
    labels = np.concatenate([np.eye(CLASSES)[np.arange(32) % CLASSES], np.ones((32, 1))], 1)
    targets = {"labels": labels.astype(np.float32),
               "cf": np.zeros((32, CF_DIM + 1), np.float32)}
    from cfimage.stage2 import losses
    moved = {}
    for rate in (0.0, 1.0):
        heads = _heads(dropout=rate)
        heads.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss={"labels": losses.MaskedWeightedBCE(np.ones(CLASSES, np.float32)),
                            "cf": losses.CFReconstructionLoss()},
                      loss_weights={"labels": 1.0, "cf": 0.0})
        before = heads.get_layer("cf_input_logits").get_weights()[0].copy()
        heads.fit({"features": features, "cf_input": cf_input}, targets, epochs=1,
                  batch_size=32, verbose=0)
        moved[rate] = np.abs(heads.get_layer("cf_input_logits").get_weights()[0] - before).max()
    assert moved[0.0] > 1e-4 and moved[1.0] == 0.0


def test_cf_inputs_of_hand_made_items():
    targets = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    out = hybrid.cf_inputs(targets, np.array([True, False, True]))
    np.testing.assert_array_equal(out, [[1, 2, 1], [0, 0, 0], [5, 6, 1]])
    assert out.dtype == np.float32


def test_datasets_move_the_cf_input_to_the_model_inputs():
    y = {"labels": np.zeros((3, 2), np.float32), "cf": np.zeros((3, 3), np.float32),
         "cf_input": np.array([[1, 2, 1], [0, 0, 0], [5, 6, 1]], np.float32)}
    batches = tf.data.Dataset.from_tensor_slices((np.arange(3.0), y)).batch(3)
    x, targets = next(iter(hybrid.with_cf_input(batches, "features")))
    assert set(targets) == {"labels", "cf"} and set(x) == {"features", "cf_input"}
    np.testing.assert_array_equal(x["cf_input"], y["cf_input"])
    x, _ = next(iter(hybrid.with_cf_input(batches, "features", cold=True)))
    assert not np.asarray(x["cf_input"]).any()
    x, _ = next(iter(hybrid.cold_view(hybrid.with_cf_input(batches, "features"))))
    assert not np.asarray(x["cf_input"]).any()
    np.testing.assert_array_equal(x["features"], [0.0, 1.0, 2.0])


def test_buckets_by_interaction_count():
    assert hybrid.bucket_names([1, 10, 100]) == ["1-9", "10-99", "100+"]
    assert hybrid.bucket_names([1, 2, 5]) == ["1", "2-4", "5+"]
    out = hybrid.buckets([0, 1, 9, 10, 250], [1, 10, 100])
    assert [name for name, _ in out] == ["0", "1-9", "10-99", "100+"]
    assert [np.flatnonzero(rows).tolist() for _, rows in out] == [[0], [1, 2], [3], [4]]
    assert [name for name, _ in hybrid.buckets([3, 7], [5])] == ["0-4", "5+"]


def test_views_of_hand_made_scores():
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    cold = np.array([[0.2, 0.8], [0.8, 0.2], [0.6, 0.4], [0.4, 0.6]])  # items 0, 1 wrong
    given = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])  # all right
    has_vector = np.array([True, True, False, True])
    out = evaluation.views(labels, cold, given, ["a", "b"], has_vector, [50, 50, 0, 5],
                           [1, 10], log=lambda _: None)
    # Cold, every item: class a scores .2 .8 .6 .4 rank items 1, 2, 3, 0; its positives 0 and
    # 2 are 4th and 2nd: AP (1/2 + 2/4) / 2 = 0.5; class b is the mirror image.
    assert out["views"]["cold"]["macro_map"] == pytest.approx(0.5)
    assert out["views"]["cold"]["num_items"] == 4
    assert out["views"]["warm"] == {"macro_map": 1.0, "precision_at_1": 1.0, "num_items": 3}
    small, large = out["warm_buckets"]
    # 1-9: item 3 alone, one class present: no AP says anything (NaN, kept for the count).
    assert (small["interactions"], small["num_items"]) == ("1-9", 1)
    assert np.isnan(small["warm_map"]) and np.isnan(small["cold_map"])
    # 10+: items 0 (a) and 1 (b); cold ranks each positive second (AP 0.5), warm first.
    assert large == {"interactions": "10+", "num_items": 2, "warm_map": 1.0, "cold_map": 0.5}
