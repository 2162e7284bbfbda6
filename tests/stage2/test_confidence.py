import numpy as np
import pytest

from cfimage.stage2 import confidence


def test_clip_and_rescale_maps_the_interquartile_range_to_1_3():
    reference = np.array([0.0, 1.0, 2.0, 3.0, 4.0])  # quantiles: 25% = 1, 75% = 3
    weights = confidence.clip_and_rescale(np.array([0.0, 1.0, 2.0, 3.0, 10.0]), reference)
    np.testing.assert_allclose(weights, [1.0, 1.0, 2.0, 3.0, 3.0])


def test_uniform_and_sqrt_weights():
    has = np.array([True, True, True, True, True, False])
    np.testing.assert_array_equal(confidence.confidence_weights("uniform", has),
                                  [1, 1, 1, 1, 1, 0])
    counts = np.array([1, 4, 9, 16, 25, 100])  # sqrt: 1..5 on the training items
    weights = confidence.confidence_weights("sqrt", has, interaction_counts=counts,
                                            train_rows=np.arange(6))
    # sqrt quantiles over items with vectors: 25% = 2, 75% = 4 -> clipped, rescaled to [1, 3]
    np.testing.assert_allclose(weights, [1.0, 1.0, 2.0, 3.0, 3.0, 0.0])


def test_loss_based_weights_favour_items_whose_vector_explains_their_labels():
    rng = np.random.default_rng(0)
    n = 400
    labels = (rng.random((n, 3)) < 0.3).astype(np.float32)
    labels[labels.sum(axis=1) == 0, 0] = 1
    vectors = labels @ rng.normal(size=(3, 8)) + 0.1 * rng.normal(size=(n, 8))
    noisy = np.arange(n) % 4 == 0
    vectors[noisy] = rng.normal(size=(noisy.sum(), 8)) * 3  # vectors that say nothing
    has = np.ones(n, bool)
    weights = confidence.confidence_weights("loss", has, vectors=vectors, labels=labels,
                                            labelled=np.ones(n, bool), train_rows=np.arange(n))
    assert weights.min() >= 1.0 and weights.max() <= 3.0
    assert weights[~noisy].mean() > weights[noisy].mean() + 0.5


def test_loss_based_weights_stay_spread_when_few_training_items_are_labelled():
    # 10% of labels: the quantiles come from the labelled items, so their weights still span
    # [1, 3] (they collapsed to a constant 2, i.e. uniform, before); unlabelled items all get
    # the weight of the median labelled item.
    rng = np.random.default_rng(1)
    n = 1000
    labels = (rng.random((n, 3)) < 0.3).astype(np.float32)
    labels[labels.sum(axis=1) == 0, 0] = 1
    vectors = labels @ rng.normal(size=(3, 8)) + rng.normal(size=(n, 8))
    labelled = np.arange(n) % 10 == 0
    weights = confidence.confidence_weights("loss", np.ones(n, bool), vectors=vectors,
                                            labels=labels, labelled=labelled,
                                            train_rows=np.arange(n))
    assert weights[labelled].min() == pytest.approx(1.0)
    assert weights[labelled].max() == pytest.approx(3.0)
    assert np.ptp(weights[~labelled]) == 0
    assert weights[~labelled][0] == pytest.approx(np.median(weights[labelled]), abs=0.05)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="uniform"):
        confidence.confidence_weights("popularity", np.ones(3, bool))
