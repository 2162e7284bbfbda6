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


# --- The --cf_loss options on a 3-item batch, by hand -----------------------------------------
PRED = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
TARGET = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]], np.float32)


def _y(weights):
    return np.concatenate([TARGET, np.array(weights, np.float32)[:, None]], axis=1)


@pytest.mark.parametrize("weights, expected", [
    # per-item MSE: 0, ((0-1)² + (1-0)²)/2 = 1, (1 + 4)/2 = 2.5
    ([1, 1, 0], 0.5), ([1, 2, 1], (0 + 2 + 2.5) / 4), ([0, 0, 0], 0.0)])
def test_mse_loss_by_hand(weights, expected):
    assert float(losses.CFMeanSquaredLoss()(_y(weights), PRED)) == pytest.approx(expected)


@pytest.mark.parametrize("weights, expected", [
    # 1 - cos: 0, 1, 1 - 1/√2
    ([1, 1, 0], 0.5), ([1, 2, 1], (0 + 2 + 1 - 1 / np.sqrt(2)) / 4), ([0, 0, 0], 0.0)])
def test_cosine_loss_by_hand(weights, expected):
    assert float(losses.CFCosineLoss()(_y(weights), PRED)) == pytest.approx(expected, rel=1e-5)


def test_infonce_loss_by_hand():
    # Unit predictions (1,0), (0,1), (1,1)/√2; unit targets (1,0), (1,0), (0,1).
    # Cosines: row 0 [1, 1, 0], row 1 [0, 0, 1], row 2 [1/√2, 1/√2, 1/√2].
    row0 = np.log(2 * np.e + 1) - 1  # -log(e / (e + e + 1))
    row1 = np.log(2 + np.e)  # -log(1 / (1 + 1 + e))
    row2 = np.log(3)
    loss = losses.CFInfoNCELoss(temperature=1.0)
    assert float(loss(_y([1, 1, 1]), PRED)) == pytest.approx((row0 + row1 + row2) / 3, rel=1e-5)
    # Item 2 masked: neither an anchor nor a candidate; rows 0, 1 see cosines [1, 1], [0, 0].
    assert float(loss(_y([1, 1, 0]), PRED)) == pytest.approx(np.log(2), rel=1e-5)
    # Temperature 0.5 doubles the logits: row 0 over [2, 2] is still log 2; row 1 [0, 0] too.
    halved = losses.CFInfoNCELoss(0.5)
    assert float(halved(_y([1, 1, 0]), PRED)) == pytest.approx(np.log(2), rel=1e-5)
    assert float(loss(_y([0, 0, 0]), PRED)) == 0.0


def test_score_loss_by_hand():
    # Users (1, 0) and (0, 2): E[u uᵀ] = diag(0.5, 2), trace 2.5. Differences p - t:
    # (0, 0); (-1, 1): E[(u·d)²] = (1 + 4)/2 = 2.5 -> 1.0; (1, -2): (1 + 16)/2 = 8.5 -> 3.4.
    moment = losses.user_moment(np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(moment, [[0.5, 0.0], [0.0, 2.0]])
    loss = losses.CFScoreLoss(moment)
    assert float(loss(_y([1, 2, 1]), PRED)) == pytest.approx((0 + 2 * 1.0 + 3.4) / 4, rel=1e-6)
    assert float(loss(_y([1, 1, 0]), PRED)) == pytest.approx(0.5, rel=1e-6)
    # Isotropic users: the MSE.
    iso = losses.CFScoreLoss(np.eye(2))
    assert float(iso(_y([1, 2, 1]), PRED)) == pytest.approx(
        float(losses.CFMeanSquaredLoss()(_y([1, 2, 1]), PRED)), rel=1e-6)


def test_make_cf_loss():
    assert isinstance(losses.make_cf_loss("paper"), losses.CFReconstructionLoss)
    assert losses.make_cf_loss("infonce", temperature=0.2).temperature == 0.2
    with pytest.raises(ValueError, match="second-moment"):
        losses.make_cf_loss("score")
    with pytest.raises(ValueError, match="unknown CF loss"):
        losses.make_cf_loss("huber")
