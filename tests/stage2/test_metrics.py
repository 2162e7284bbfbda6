import numpy as np
import pytest

from cfimage.stage2.metrics import evaluate_scores


def test_map_and_precision_at_1_by_hand():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float32)
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.3, 0.0], [0.2, 0.7, 0.1]])
    metrics = evaluate_scores(labels, scores, ["a", "b", "c"])
    # class a: ranking 0.9(+), 0.8(-), 0.2(+) -> AP = (1/1 + 2/3) / 2
    # class b: ranking 0.7(+), 0.3(+), 0.1(-) -> AP = 1
    assert metrics["per_class_ap"]["a"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["per_class_ap"]["b"] == pytest.approx(1.0)
    assert metrics["classes_without_positives"] == ["c"]
    assert metrics["macro_map"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    # arg-max classes: a (true), a (false), b (true)
    assert metrics["precision_at_1"] == pytest.approx(2 / 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="must be equal"):
        evaluate_scores(np.zeros((2, 3)), np.zeros((2, 2)), ["a", "b", "c"])
