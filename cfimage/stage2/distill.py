"""The distill arms' teacher (cfimage/stage2/arms.py: `distill`, `distill+multitask`): a CF
vector → labels classifier whose soft labels the image model's label head learns on every
training item that has a CF vector (Lopez-Paz et al. 2016, distillation of privileged
information: the CF vector is known in training, not for a new image).

The teacher is a linear model on the item's CF vector, standardised per dimension over the
training items that have one: per-class sigmoids (multi-label catalogues) or one softmax
(single-label), with an L2 penalty α on the weights (not the biases). It is fit on the
*labelled training* items with a CF vector only: the items --label_ratio kept labels for.
Validation and test items are never read, neither their labels nor their vectors. α is chosen
by K-fold cross-validation on those same labelled training items (the held-out cross-entropy,
the quantity the soft labels are matched with); with fewer than 2·K of them, DEFAULT_ALPHA.

The soft labels travel with the label targets (data.pack_targets' [labels (C), labelled (1)]
becomes [labels, labelled, soft labels (C), distillation weight (1)], `pack`): the weight is 1
for the training items with a vector, 0 for the others, validation and test. The loss that
reads them: losses.DistilledBCE / losses.DistilledCrossEntropy. Plain numpy and scipy, no
TensorFlow.
"""

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

ALPHAS = (10.0, 1.0, 0.1, 0.01, 0.001, 0.0001)  # strongest first: ties keep the stronger
DEFAULT_ALPHA = 0.01  # too few labelled training items to cross-validate
FOLDS = 3
MAX_ITERATIONS = 500
EPSILON = 1e-7


def _probabilities(logits, multi_label):
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def cross_entropy(labels, probabilities, multi_label):
    """Mean per item of Σ_c BCE (multi-label) or −Σ_c y log p (single-label)."""
    p = np.clip(probabilities, EPSILON, 1.0 - EPSILON)
    per_class = -labels * np.log(p)
    if multi_label:
        per_class -= (1.0 - labels) * np.log(1.0 - p)
    return float(per_class.sum(axis=1).mean())


def _with_bias(features):
    return np.concatenate([features, np.ones((len(features), 1))], axis=1)


def fit_linear(features, labels, alpha, multi_label, initial=None):
    """Weights (d + 1, C), the last row the biases, minimising the mean cross-entropy +
    α/2 ‖W‖² (biases unpenalised), by L-BFGS from `initial` (default zeros). The gradient of
    the data term is Xᵀ(P − Y) / n for sigmoids, Xᵀ(P·Σ_c y − Y) / n for the softmax (the
    same for one-hot rows; --task=single_label on multi-hot rows has Σ_c y > 1)."""
    x = _with_bias(np.asarray(features, np.float64))
    y = np.asarray(labels, np.float64)
    n, num_classes = len(x), y.shape[1]
    penalised = np.ones((x.shape[1], 1))
    penalised[-1] = 0.0
    total = 1.0 if multi_label else y.sum(axis=1, keepdims=True)

    def objective(flat):
        weights = flat.reshape(x.shape[1], num_classes)
        p = _probabilities(x @ weights, multi_label)
        loss = cross_entropy(y, p, multi_label) + 0.5 * alpha * float(
            (penalised * weights ** 2).sum())
        gradient = x.T @ (p * total - y) / n + alpha * penalised * weights
        return loss, gradient.ravel()

    start = np.zeros(x.shape[1] * num_classes) if initial is None else np.ravel(initial)
    result = optimize.minimize(objective, start, jac=True,
                               method="L-BFGS-B", options={"maxiter": MAX_ITERATIONS})
    return result.x.reshape(x.shape[1], num_classes)


def predict(weights, features, multi_label):
    return _probabilities(_with_bias(np.asarray(features, np.float64)) @ weights, multi_label)


def choose_alpha(features, labels, multi_label, seed, alphas=ALPHAS, folds=FOLDS):
    """(α, {α: mean held-out cross-entropy}) by `folds`-fold cross-validation on the rows
    given (the labelled training items); (DEFAULT_ALPHA, {}) when they are fewer than
    2 × folds."""
    if len(features) < 2 * folds:
        return DEFAULT_ALPHA, {}
    order = np.random.default_rng(seed).permutation(len(features))
    parts = np.array_split(order, folds)
    scores, previous = {}, [None] * folds
    for alpha in alphas:  # each fold's fit starts from its fit at the previous α
        losses = []
        for k in range(folds):
            fit = np.concatenate([parts[j] for j in range(folds) if j != k])
            previous[k] = fit_linear(features[fit], labels[fit], alpha, multi_label,
                                     initial=previous[k])
            held_out = predict(previous[k], features[parts[k]], multi_label)
            losses.append(cross_entropy(labels[parts[k]], held_out, multi_label))
        scores[alpha] = float(np.mean(losses))
    best = min(alphas, key=lambda alpha: scores[alpha])  # first (strongest) of equal scores
    return best, scores


def fit_teacher(vectors, has_vector, labels, labelled, train_rows, multi_label, seed=0,
                alpha=None):
    """The teacher of a run and its soft labels.

    vectors (n, d), has_vector (n,), labels (n, C) multi-hot, labelled (n,) after
    --label_ratio masking, train_rows: the training split. Reads only the training rows.
    `alpha`: a fixed L2 strength instead of cross-validation.

    Returns (soft (n, C) float32, weight (n,) float32: 1 for the training items with a
    vector, 0 elsewhere; summary dict for metrics.json). Raises ValueError when no labelled
    training item has a CF vector.
    """
    train_rows = np.asarray(train_rows)
    has_vector = np.asarray(has_vector, bool)
    students = train_rows[has_vector[train_rows]]
    fit_rows = students[np.asarray(labelled, bool)[students]]
    if len(fit_rows) == 0:
        raise ValueError("the distill teacher needs labelled training items with a CF vector, "
                         "and this split has none")
    # Standardised over the training items with a vector (no labels read).
    raw = np.asarray(vectors, np.float64)[students]
    mean, scale = raw.mean(axis=0), raw.std(axis=0)
    features = (raw - mean) / np.where(scale > 0, scale, 1.0)
    fit_features = features[np.isin(students, fit_rows)]
    fit_labels = np.asarray(labels, np.float64)[fit_rows]
    # One BLAS thread: the products are small, and threads that wait for busy cores (training
    # beside it) made a fit 30x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        chosen, scores = ((alpha, {}) if alpha is not None else
                          choose_alpha(fit_features, fit_labels, multi_label, seed))
        weights = fit_linear(fit_features, fit_labels, chosen, multi_label)
    soft = np.zeros(np.asarray(labels).shape, np.float32)
    soft[students] = predict(weights, features, multi_label)
    weight = np.zeros(len(soft), np.float32)
    weight[students] = 1.0
    unlabelled = ~np.asarray(labelled, bool)[students]
    summary = {
        "fit_items": int(len(fit_rows)), "soft_label_items": int(len(students)),
        "unlabelled_soft_label_items": int(unlabelled.sum()),
        "link": "sigmoid" if multi_label else "softmax", "alpha": float(chosen),
        "alpha_from": "fixed" if alpha is not None else (
            f"{FOLDS}-fold cross-validation on the labelled training items" if scores
            else f"default (fewer than {2 * FOLDS} labelled training items)"),
        "cv_cross_entropy": {f"{a:g}": s for a, s in scores.items()},
        "fit_cross_entropy": cross_entropy(fit_labels, soft[fit_rows], multi_label),
    }
    return soft, weight, summary


def pack(label_targets, soft, weight):
    """[labels (C), labelled (1)] targets -> [labels, labelled, soft labels (C), weight (1)]."""
    return np.concatenate([label_targets, soft, weight[:, None]], axis=1).astype(np.float32)
