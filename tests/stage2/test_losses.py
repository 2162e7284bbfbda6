"""The losses of docs/method.md on 3-item batches, checked against numbers worked out by hand."""

import math

import numpy as np
import pytest

from cfimage.stage2 import losses


def test_masked_weighted_bce_by_hand():
    # Two classes with positive weights 2 and 1; the third item is unlabelled.
    y_true = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0]], np.float32)
    y_pred = np.array([[0.8, 0.4], [0.5, 0.9], [0.1, 0.1]], np.float32)
    loss = losses.MaskedWeightedBCE([2.0, 1.0])(y_true, y_pred)
    item1 = -(2 * math.log(0.8) + math.log(0.6)) / 2  # 0.47856
    item2 = -(math.log(0.5) + 1 * math.log(0.9)) / 2  # 0.39925
    assert float(loss) == pytest.approx((item1 + item2) / 2, rel=1e-5)
    assert float(loss) == pytest.approx(0.43891, abs=1e-4)


def test_bce_of_a_batch_without_labels_is_zero():
    y_true = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    assert float(losses.MaskedWeightedBCE([1.0, 1.0])(y_true, np.full((2, 2), 0.3))) == 0.0


def test_positive_weights_count_labelled_items_only():
    labels = np.array([[1, 0], [1, 1], [0, 1], [1, 1]], np.float32)
    labelled = np.array([True, True, True, False])
    np.testing.assert_allclose(losses.positive_weights(labels, labelled), [3 / 2, 3 / 2])


def test_masked_cross_entropy_by_hand():
    y_true = np.array([[1, 0, 1], [0, 1, 1], [0, 1, 0]], np.float32)
    y_pred = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]], np.float32)
    expected = -(math.log(0.7) + math.log(0.6)) / 2
    assert float(losses.MaskedCrossEntropy()(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)


def test_cf_loss_by_hand():
    # item 1: error [1, 0] -> mse .5 + l1 .5 = 1 -> e^1 - 1, weight 1
    # item 2: error [0, 2] -> mse 2 + l1 1 = 3 -> e^3 - 1, weight 2
    # item 3: no vector (weight 0): its wild prediction must not count
    y_true = np.array([[1, 0, 1], [0, 2, 2], [0, 0, 0]], np.float32)
    y_pred = np.array([[0, 0], [0, 0], [100, 100]], np.float32)
    loss = losses.CFReconstructionLoss()(y_true, y_pred)
    expected = (1 * (math.e - 1) + 2 * (math.exp(3) - 1)) / 3  # 13.2964
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_cf_loss_is_linear_above_the_threshold_and_finite():
    loss = losses.CFReconstructionLoss(linear_above=2.0)
    # error [4]: mse 16 + l1 4 = 20 -> e^2 - 1 + e^2 * (20 - 2)
    value = loss(np.array([[4.0, 1.0]], np.float32), np.array([[0.0]], np.float32))
    assert float(value) == pytest.approx(math.exp(2) - 1 + math.exp(2) * 18, rel=1e-5)
    huge = loss(np.array([[1e6, 1.0]], np.float32), np.array([[0.0]], np.float32))
    assert np.isfinite(float(huge))


def test_cf_error_metrics_ignore_items_without_vectors():
    y_true = np.array([[1, 0, 1], [0, 2, 1], [0, 0, 0]], np.float32)
    y_pred = np.array([[0, 0], [0, 0], [9, 9]], np.float32)
    mse, l1 = losses.CFError("mse"), losses.CFError("l1")
    mse.update_state(y_true, y_pred)
    l1.update_state(y_true, y_pred)
    assert float(mse.result()) == pytest.approx((0.5 + 2.0) / 2)
    assert float(l1.result()) == pytest.approx((0.5 + 1.0) / 2)


def test_triplet_loss_by_hand():
    # item 1: anchor [0,0], positive [1,0], negative (item 2's positive) [0,2]
    #   d+ = 0.5, d- = 2  -> max(0, 0.5 - 2 + 1) = 0
    # item 2: anchor [0,1], positive [0,2], negative (item 1's positive) [1,0]
    #   d+ = 0.5, d- = (1 + 1)/2 = 1 -> max(0, 0.5 - 1 + 1) = 0.5
    y_true = np.array([[1, 0, 1], [0, 2, 1]], np.float32)
    y_pred = np.array([[0, 0], [0, 1]], np.float32)
    loss = losses.CFTripletLoss(margin=1.0)(y_true, y_pred)
    assert float(loss) == pytest.approx(0.25)
    # An item without a positive (weight 0) takes itself and its "negative" user out.
    y_true[1, 2] = 0
    assert math.isclose(float(losses.CFTripletLoss(margin=1.0)(y_true, y_pred)), 0.0,
                        abs_tol=1e-7)
