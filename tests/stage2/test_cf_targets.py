"""The CF target transforms (cfimage/stage2/cf_targets.py), by hand on 3 items with a vector
and one without: fit on the training items only, their inverse, users mapped alongside."""

import numpy as np
import pytest

from cfimage.errors import UserError
from cfimage.stage2 import cf_targets

# Items 0 and 1 are training items; item 2 is not (validation/test); item 3 has no vector.
VECTORS = np.array([[1.0, 2.0], [3.0, 6.0], [10.0, 0.0], [7.0, 7.0]], np.float32)
HAS = np.array([True, True, True, False])
TRAIN = np.array([0, 1, 3])


def test_standardised_is_fit_on_training_items_only():
    targets, scaling = cf_targets.fit(VECTORS, HAS, TRAIN, "standardised", 0.5)
    # Training mean (2, 4); centred (±1, ±2): RMS sqrt(2.5); scale sqrt(2.5) / 0.5 = sqrt(10).
    np.testing.assert_allclose(scaling["mean"], [2.0, 4.0])
    assert scaling["scale"] == pytest.approx(np.sqrt(10.0))
    root10 = np.sqrt(10.0)
    np.testing.assert_allclose(targets, [[-1 / root10, -2 / root10], [1 / root10, 2 / root10],
                                         [8 / root10, -4 / root10], [0, 0]], rtol=1e-6)
    assert scaling["fit_items"] == 2 and scaling["kind"] == "standardised"
    np.testing.assert_allclose(cf_targets.to_vectors(targets[:3], scaling), VECTORS[:3],
                               rtol=1e-6, atol=1e-6)


def test_l2_and_raw():
    targets, scaling = cf_targets.fit(VECTORS, HAS, TRAIN, "l2")
    np.testing.assert_allclose(targets, [[1 / np.sqrt(5), 2 / np.sqrt(5)],
                                         [1 / np.sqrt(5), 2 / np.sqrt(5)], [1, 0], [0, 0]],
                               rtol=1e-6)
    assert (scaling["mean"], scaling["scale"]) == ([0.0, 0.0], 1.0)
    targets, scaling = cf_targets.fit(VECTORS, HAS, TRAIN, "raw")
    np.testing.assert_array_equal(targets, [[1, 2], [3, 6], [10, 0], [0, 0]])
    np.testing.assert_array_equal(cf_targets.to_vectors(targets, scaling), targets)


def test_pca_whiten_by_hand():
    # Training covariance [[1, 2], [2, 4]]: one direction (1, 2)/sqrt(5) of variance 5.
    targets, scaling = cf_targets.fit(VECTORS, HAS, TRAIN, "pca_whiten:1", 0.5)
    # ((v - (2, 4)) . (1, 2)/sqrt(5)) / sqrt(5) * 0.5: -0.5, 0.5, and 0 for item 2.
    np.testing.assert_allclose(targets, [[-0.5], [0.5], [0.0], [0.0]], atol=1e-6)
    np.testing.assert_allclose(scaling["matrix"], [[2.0, 4.0]], rtol=1e-6)  # (1,2)/√5 · √5 / 0.5
    np.testing.assert_allclose(cf_targets.to_vectors(targets[:2], scaling), VECTORS[:2],
                               rtol=1e-6, atol=1e-6)
    with pytest.raises(UserError, match=r"vary in only 1 directions; use pca_whiten:K with "
                                        r"K <= 1"):
        cf_targets.fit(VECTORS, HAS, TRAIN, "pca_whiten:2")


def test_users_keep_their_score_differences_in_target_space():
    users = np.array([[1.0, -1.0], [0.5, 2.0]])
    for spec in ("standardised", "raw", "pca_whiten:1"):
        targets, scaling = cf_targets.fit(VECTORS, HAS, TRAIN, spec)
        mapped = cf_targets.users_in_target_space(users, scaling)
        vectors = cf_targets.to_vectors(targets[:3], scaling)  # pca: the projected vectors
        np.testing.assert_allclose(mapped @ (targets[0] - targets[2]),
                                   users @ (vectors[0] - vectors[2]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text, parsed", [
    ("standardised", ("standardised", None)), ("l2", ("l2", None)), ("raw", ("raw", None)),
    ("pca_whiten:8", ("pca_whiten", 8)), ("pca_whiten", None), ("pca_whiten:0", None),
    ("l2:3", None), ("whiten", None)])
def test_parse(text, parsed):
    assert cf_targets.parse(text) == parsed


def test_no_training_vector_is_a_user_error():
    with pytest.raises(UserError, match="no training item has a CF vector"):
        cf_targets.fit(VECTORS, HAS, np.array([3]), "standardised")
