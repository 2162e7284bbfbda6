"""Confidence weights w_i of the CF loss (docs/method.md, "MTL-reconstruct" variants).

  uniform: 1 for every item with a CF vector;
  sqrt:    sqrt(number of interactions of the item);
  loss:    1 / (mean BCE of a small classifier that predicts labels from the
           CF vector, over the item's positive labels): items whose vector
           explains their labels well get more weight.

Non-uniform weights are clipped to the [25%, 75%] quantiles of the training
items' weights (for loss: of the labelled training items, the only ones whose loss
is known; the others get their median) and rescaled linearly to
[1, 3]. Items without a vector get 0. Only training labels are used to fit the
loss-based classifier.
"""

import numpy as np

KINDS = ("uniform", "sqrt", "loss")


def clip_and_rescale(weights, reference):
    """Clips to the [25%, 75%] quantiles of `reference`, then maps that range to [1, 3]."""
    low, high = np.quantile(reference, [0.25, 0.75])
    if high <= low:
        return np.full_like(weights, 2.0, dtype=np.float32)
    clipped = np.clip(weights, low, high)
    return (1.0 + 2.0 * (clipped - low) / (high - low)).astype(np.float32)


def label_loss_from_vectors(vectors, labels, fit_rows, seed=0):
    """Per item: mean BCE over its positive labels of a logistic regression vectors -> labels.

    Fitted on `fit_rows`; returns NaN for items without positive labels.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    classes = labels[fit_rows].sum(axis=0) > 0  # a class needs positives to be fitted
    probabilities = np.full(labels.shape, 0.5)
    classifier = OneVsRestClassifier(LogisticRegression(max_iter=500, random_state=seed))
    classifier.fit(vectors[fit_rows], labels[fit_rows][:, classes])
    probabilities[:, classes] = classifier.predict_proba(vectors)
    bce = -np.log(np.clip(probabilities, 1e-7, 1.0))
    positives = labels > 0
    count = positives.sum(axis=1)
    total = (bce * positives).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def confidence_weights(kind, has_vector, interaction_counts=None, vectors=None, labels=None,
                       labelled=None, train_rows=None, seed=0):
    """Weights (n,) float32 for the CF loss; 0 where there is no vector."""
    if kind not in KINDS:
        raise ValueError(f"confidence weights must be one of {KINDS}, not {kind!r}")
    has_vector = np.asarray(has_vector, bool)
    if kind == "uniform":
        return has_vector.astype(np.float32)
    train_rows = np.asarray(train_rows)
    train_with_vector = train_rows[has_vector[train_rows]]
    if kind == "sqrt":
        raw = np.sqrt(np.asarray(interaction_counts, np.float64))
        reference = raw[train_with_vector]
    else:
        fit_rows = train_with_vector[labelled[train_with_vector]]
        if len(fit_rows) < 2:
            raise ValueError("loss-based confidence weights need labelled training items "
                             "with CF vectors")
        raw = 1.0 / np.maximum(label_loss_from_vectors(vectors, labels, fit_rows, seed), 1e-6)
        # Items without known training labels get the median weight of those with them.
        known = np.zeros(len(raw), bool)
        known[fit_rows] = True
        raw = np.where(known, raw, np.median(raw[fit_rows]))
        # Quantiles over the items whose loss is known: with few labels, the median-filled
        # majority would make the 25% and 75% quantiles equal and every weight 2 (uniform).
        reference = raw[fit_rows]
    weights = clip_and_rescale(raw, reference)
    return np.where(has_vector, weights, 0.0).astype(np.float32)
