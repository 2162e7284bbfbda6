"""Reference points for stage 1: a truncated-SVD recommender and a genre probe of item vectors.

* `svd_factors` factorises the binarised user x item matrix of the fitted log (1 where a user
  touched an item, whatever the rating or count). Its user x item reconstruction scores items
  for held-out recall with the same `recall_at_k` protocol as the two-tower
  (`cf_embeddings.train_two_tower` computes both in one run); its item factors are a second
  kind of CF vector to compare with.
* `recall_at_k` and `holdout_lists` are the held-out protocol that every recommender here is
  scored with (the two-tower too).
* `genre_probe` measures how much label (genre) information item vectors carry: a one-vs-rest
  logistic regression from vector to labels on a seeded 70/30 item split, scored by macro
  average precision on the test items (the paper's metric).

numpy / scipy / scikit-learn, and TensorFlow's top-k (5x faster than numpy's argpartition
here, it ranks rows on every core).
"""

import numpy as np
import pandas as pd
import scipy.sparse
import scipy.sparse.linalg
import tensorflow as tf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

__all__ = ["recall_at_k", "holdout_lists", "binary_matrix", "svd_factors", "genre_probe"]


def recall_at_k(user_scores, train_items, heldout_items, k, chunk=1024):
    """Mean over users of |top-k ∩ heldout| / min(k, |heldout|).

    user_scores: (n_users, n_candidates) array, or a callable (row slice) -> that block, to keep
    memory bounded. train_items / heldout_items: per user, arrays of candidate column indices.
    A user's training items are excluded from the ranking; users without held-out items are
    skipped. Held-out items outside the candidate set must be passed as -1: they count in the
    denominator but can never be hit.
    """
    get = user_scores if callable(user_scores) else (lambda rows: user_scores[rows])
    recalls = []
    n_users = len(train_items)
    for begin in range(0, n_users, chunk):
        rows = slice(begin, min(begin + chunk, n_users))
        scores = np.array(get(rows), dtype=np.float32)
        n_rows, n_candidates = scores.shape
        row, column = _pairs(train_items[rows])
        scores[row, column] = -np.inf  # a user's training items are not ranked
        # Ties go to the lower column (a ranking of equal scores is the candidates' order).
        top_k = tf.math.top_k(scores, min(k, n_candidates), sorted=False).indices.numpy()
        held = np.zeros((n_rows, n_candidates), bool)
        row, column = _pairs(heldout_items[rows])
        held[row, column] = True
        hits = held[np.arange(n_rows)[:, None], top_k].sum(axis=1)
        sizes = np.array([len(items) for items in heldout_items[rows]])
        scored = sizes > 0  # users without held-out items are skipped
        recalls.append(hits[scored] / np.minimum(k, sizes[scored]))
    recalls = np.concatenate(recalls) if recalls else np.zeros(0)
    return float(np.mean(recalls)) if len(recalls) else float("nan")


def _pairs(per_user):
    """(row, column) of the columns >= 0 in a list of per-user column arrays."""
    sizes = [len(columns) for columns in per_user]
    row = np.repeat(np.arange(len(per_user)), sizes)
    column = (np.concatenate([np.asarray(c, np.int64) for c in per_user]) if sum(sizes)
              else np.zeros(0, np.int64))
    return row[column >= 0], column[column >= 0]


def holdout_lists(known, heldout, item_vocab):
    """Per evaluated user, candidate column indices for recall_at_k -> (users, known, heldout).

    Users are the sorted users with held-out rows; candidates are `item_vocab` (column j is
    item_vocab[j]). Known items outside the candidates are -1 (ignored); held-out items outside
    them are -1 too (they count in the denominator but can never be hit).
    """
    columns = pd.Index(np.asarray(item_vocab))
    users = np.array(sorted(heldout["user_id"].unique()))

    def per_user(frame):
        frame = frame[frame["user_id"].isin(users)].drop_duplicates(["user_id", "item_id"])
        rows = np.searchsorted(users, frame["user_id"].to_numpy())
        cols = columns.get_indexer(frame["item_id"]).astype(np.int64)  # -1: not a candidate
        order = np.argsort(rows, kind="stable")  # a user's items keep their order
        ends = np.cumsum(np.bincount(rows, minlength=len(users)))
        return np.split(cols[order], ends[:-1])

    return users, per_user(known), per_user(heldout)


def binary_matrix(user_index, item_index, n_users, n_items):
    """CSR float32 matrix with 1 at every (user, item) pair given (duplicates count once)."""
    user_index = np.asarray(user_index, np.int64)
    item_index = np.asarray(item_index, np.int64)
    matrix = scipy.sparse.csr_matrix(
        (np.ones(len(user_index), np.float32), (user_index, item_index)),
        shape=(n_users, n_items))
    matrix.data[:] = 1.0  # csr_matrix sums duplicate pairs; binarise again.
    return matrix


def svd_factors(matrix, rank, seed=0):
    """Rank-`rank` truncated SVD of `matrix` -> (user_factors U*S, item_factors V), float32.

    user_factors @ item_factors.T is the best rank-`rank` approximation of `matrix`; that
    reconstruction is the recommender's score. The rank is capped at min(shape) - 1 (ARPACK).
    """
    n_users, n_items = matrix.shape
    rank = int(min(rank, min(n_users, n_items) - 1))
    if rank < 1:
        raise ValueError(f"svd_factors: matrix of shape {matrix.shape} is too small for an SVD")
    # ARPACK's start vector is random unless v0 is given: seed it so runs are reproducible.
    v0 = np.random.default_rng(seed).uniform(-1, 1, min(n_users, n_items))
    u, s, vt = scipy.sparse.linalg.svds(matrix.astype(np.float64), k=rank, v0=v0)
    order = np.argsort(-s)  # svds returns ascending singular values.
    u, s, vt = u[:, order], s[order], vt[order]
    return (u * s).astype(np.float32), vt.T.astype(np.float32)


def genre_probe(vectors, labels, seed=0, test_fraction=0.3, max_iter=1000):
    """Macro test mAP of a one-vs-rest logistic regression from item vectors to labels.

    vectors: (n_items, d) floats; labels: (n_items, C) 0/1. Items are split at random (seeded)
    into train and test; features are standardised on the train items. Classes without a
    positive among the test items (or the train items) are left out of the macro mean.
    Returns a dict with map, n_train, n_test, n_classes.
    """
    vectors = np.asarray(vectors, np.float64)
    labels = np.asarray(labels).astype(bool)
    if vectors.ndim != 2 or labels.ndim != 2 or len(vectors) != len(labels):
        raise ValueError(f"genre_probe: need (n, d) vectors and (n, C) labels; got "
                         f"{vectors.shape} and {labels.shape}")
    order = np.random.default_rng(seed).permutation(len(vectors))
    n_test = int(round(test_fraction * len(vectors)))
    test, train = order[:n_test], order[n_test:]
    if len(test) == 0 or len(train) == 0:
        raise ValueError(f"genre_probe: {len(vectors)} items are too few for a train/test split")
    scaler = StandardScaler().fit(vectors[train])
    x_train, x_test = scaler.transform(vectors[train]), scaler.transform(vectors[test])
    precisions = []
    for c in range(labels.shape[1]):
        y_train, y_test = labels[train, c], labels[test, c]
        if y_test.sum() == 0 or y_train.sum() == 0 or y_train.all():
            continue
        classifier = LogisticRegression(max_iter=max_iter).fit(x_train, y_train)
        precisions.append(average_precision_score(y_test,
                                                  classifier.decision_function(x_test)))
    return {"map": float(np.mean(precisions)) if precisions else float("nan"),
            "n_train": len(train), "n_test": len(test), "n_classes": len(precisions)}
