"""Tests for the stage-1 reference points (cfimage.stage1.baselines)."""

import numpy as np
import pytest

from cfimage.stage1 import baselines as cb
from cfimage.stage1 import memory
from tests.stage1.planted import planted_log


def test_binary_matrix_counts_duplicates_once():
    matrix = cb.binary_matrix([0, 0, 1, 0], [2, 2, 0, 1], n_users=2, n_items=3)
    np.testing.assert_array_equal(matrix.toarray(), [[0, 1, 1], [1, 0, 0]])
    assert matrix.dtype == np.float32


def test_svd_factors_reconstruct_low_rank_matrix():
    rng = np.random.default_rng(0)
    exact = rng.normal(size=(12, 2)) @ rng.normal(size=(2, 9))
    users, items = cb.svd_factors(exact, rank=2)
    assert users.shape == (12, 2) and items.shape == (9, 2)
    np.testing.assert_allclose(users @ items.T, exact, atol=1e-4)
    # Largest singular value first; item factors orthonormal.
    assert np.linalg.norm(users[:, 0]) >= np.linalg.norm(users[:, 1])
    np.testing.assert_allclose(items.T @ items, np.eye(2), atol=1e-5)
    # Rank is capped at min(shape) - 1; seeded, so reproducible.
    assert cb.svd_factors(exact, rank=50)[1].shape == (9, 8)
    np.testing.assert_array_equal(cb.svd_factors(exact, 3, seed=1)[0],
                                  cb.svd_factors(exact, 3, seed=1)[0])
    with pytest.raises(ValueError, match="too small"):
        cb.svd_factors(np.ones((1, 5)), rank=1)


def test_svd_recall_on_planted_structure_beats_popularity():
    """The same protocol as train_two_tower: split, holdout_lists, recall_at_k."""
    log = planted_log()
    known, heldout = memory.split_holdout(log, 0.3, seed=0)
    users = np.array(sorted(known["user_id"].unique()))
    items = np.array(sorted(known["item_id"].unique()))
    eval_users, known_items, heldout_items = cb.holdout_lists(known, heldout, items)
    matrix = cb.binary_matrix(np.searchsorted(users, known["user_id"]),
                              np.searchsorted(items, known["item_id"]), len(users), len(items))
    user_factors, item_factors = cb.svd_factors(matrix, rank=4)
    rows = np.searchsorted(users, eval_users)
    svd = cb.recall_at_k(user_factors[rows] @ item_factors.T, known_items, heldout_items, k=3)
    counts = np.asarray(matrix.sum(axis=0)).ravel()
    popularity = cb.recall_at_k(np.tile(counts, (len(rows), 1)), known_items, heldout_items, k=3)
    # Rank 4 = the three groups + the shared item: top-3 stays on-group; popularity mixes groups.
    assert svd > popularity + 0.3, (svd, popularity)


def test_genre_probe_separates_informative_from_random_vectors():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 4))
    labels = np.stack([vectors[:, 0] > 0.5, vectors[:, 1] + vectors[:, 2] > 0,
                       np.zeros(300, bool)], axis=1)  # The empty class is left out.
    good = cb.genre_probe(vectors, labels, seed=0)
    assert good["map"] > 0.95 and good["n_classes"] == 2
    assert (good["n_train"], good["n_test"]) == (210, 90)
    noise = cb.genre_probe(rng.normal(size=(300, 4)), labels, seed=0)
    # Random scores give average precision near the positive rate (~0.31 and 0.5 here).
    assert noise["map"] < 0.6, noise
    assert cb.genre_probe(vectors, labels, seed=0) == good  # Seeded split: reproducible.


def test_genre_probe_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(n, d\) vectors and \(n, C\) labels"):
        cb.genre_probe(np.zeros((5, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match="too few"):
        cb.genre_probe(np.zeros((1, 2)), np.ones((1, 1)))


def test_recall_at_k_by_hand():
    scores = np.array([[0.9, 0.8, 0.1, 0.7],
                       [0.1, 0.2, 0.3, 0.4]])
    train = [np.array([0]), np.array([], np.int64)]
    # User 0: item 0 excluded, top-2 = {1, 3}; heldout {3, 2} -> 1 / min(2, 2) = 0.5.
    # User 1: top-2 = {3, 2}; heldout {2} plus one unseen item (-1) -> 1 / min(2, 2) = 0.5...
    heldout = [np.array([3, 2]), np.array([2, -1])]
    assert cb.recall_at_k(scores, train, heldout, k=2) == pytest.approx(0.5)
    # ... and with k=1 user 1 scores 0 / 1 (top-1 is item 3), user 0 scores 0 (top-1 item 1).
    assert cb.recall_at_k(scores, train, heldout, k=1) == pytest.approx(0.0)
    # A user without held-out items is skipped, not counted as 0.
    assert cb.recall_at_k(scores, train, [np.array([3]), np.array([], np.int64)],
                          k=2, chunk=1) == pytest.approx(1.0)
