"""Probes of `python -m cfimage.diagnose`: what the images, the CF vectors and both tell about
the labels, and how much of a CF vector the image predicts. Plain numpy, seconds per split.

* `label_probe`: a linear classifier (logistic: sigmoid per class for multi-label, softmax for
  single-label) trained full-batch with Adam on standardised features; its L2 strength and its
  stopping step are chosen on validation macro mAP only, then it scores the test items.
* `fuse`: two probes' scores mixed with a weight chosen on validation (late fusion). A single
  probe on concatenated features drowns a 64-dimensional CF vector in 1,280 image dimensions
  when labels are few; the mix cannot do worse on validation than either probe alone.
* `ridge_r2`: ridge regression from image features to standardised CF vectors, alpha chosen on
  validation R², held-out R² on test, and the same fit on a shuffled pairing (the null: what
  the procedure reaches when the image says nothing about the vector).
"""

import dataclasses

import numpy as np


FUSION_WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))  # weight of the second probe


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    l2_grid: tuple = (1e-3, 1e-2, 1e-1)  # L2 penalty per weight, chosen on validation mAP
    max_steps: int = 300  # full-batch Adam steps
    learning_rate: float = 0.01
    eval_every: int = 10  # validation mAP every this many steps
    patience: int = 5  # stop after this many evaluations without a better validation mAP
    ridge_alphas: tuple = tuple(np.logspace(-3, 3, 13))  # x the mean squared singular value


def standardise(train, *others):
    """Centres and scales every column by the training rows' mean and std (a column constant
    on the training rows is only centred). Returns the transformed arrays (float32)."""
    train = np.asarray(train, np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-6 * max(float(std.max(initial=0.0)), 1e-300), std, 1.0)
    return [((np.asarray(x, np.float64) - mean) / std).astype(np.float32)
            for x in (train, *others)]


def cf_features(vectors, has_vector):
    """CF vectors as probe inputs: the vector, and a has-vector flag (an item without a vector
    gets zeros, which after standardisation is the training mean)."""
    return np.concatenate([np.where(has_vector[:, None], vectors, 0.0),
                           has_vector[:, None]], axis=1).astype(np.float32)


@dataclasses.dataclass
class ProbeResult:
    test_scores: np.ndarray  # (n_test, C)
    validation_scores: np.ndarray  # (n_val, C), of the chosen L2 strength and step
    l2: float
    step: int
    val_map: float


def label_probe(x_train, y_train, x_val, y_val, x_test, multi_label, settings=ProbeSettings(),
                seed=0):
    """Trains the linear label probe; returns a ProbeResult.

    Training rows are the labelled training items; validation rows the (labelled) validation
    items. Classes without a positive in validation do not count in the selection (as in
    evaluate_scores)."""
    x_train, x_val, x_test = standardise(x_train, x_val, x_test)
    y_train = y_train.astype(np.float32)
    if not multi_label:  # one-hot rows; an item with several labels spreads its target
        y_train = y_train / np.maximum(y_train.sum(axis=1, keepdims=True), 1.0)
    best = None
    for l2 in settings.l2_grid:
        weights = _fit(x_train, y_train, x_val, y_val, multi_label, l2, settings, seed)
        if best is None or weights["val_map"] > best["val_map"]:
            best = weights
    return ProbeResult(_predict(x_test, best["w"], best["b"], multi_label),
                       _predict(x_val, best["w"], best["b"], multi_label),
                       best["l2"], best["step"], best["val_map"])


def fuse(first, second, y_val, weights=FUSION_WEIGHTS):
    """Late fusion of two probes: scores (1 − w)·first + w·second, with w chosen on validation
    macro mAP (the smallest w among ties). Returns (test scores, w)."""
    def val_map(w):
        return fast_macro_map(y_val, (1 - w) * first.validation_scores
                              + w * second.validation_scores)

    chosen = max(weights, key=val_map)  # max keeps the first of equal values
    return (1 - chosen) * first.test_scores + chosen * second.test_scores, float(chosen)


def _predict(x, w, b, multi_label):
    logits = x @ w + b
    if multi_label:
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -30, 30)))
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fast_macro_map(labels, scores):
    """Macro mAP over the classes with a positive, as evaluate_scores computes it, without
    sklearn's per-call overhead (it runs at every validation check). Tied scores are taken in
    index order, where sklearn groups them; the two agree for untied scores."""
    labels = np.asarray(labels, np.float64)
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(labels, order, axis=0)
    positives = hits.sum(axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(hits) + 1)[:, None]
    present = positives > 0
    if not present.any():
        return float("nan")
    return float(np.mean((precision * hits).sum(axis=0)[present] / positives[present]))


def _fit(x, y, x_val, y_val, multi_label, l2, settings, seed):
    rng = np.random.default_rng(seed)
    n, d = x.shape
    w = (rng.standard_normal((d, y.shape[1])) * 0.01).astype(np.float32)
    b = np.zeros(y.shape[1], np.float32)
    moments = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    best = {"val_map": -np.inf, "w": w.copy(), "b": b.copy(), "l2": l2, "step": 0}
    stale = 0
    for step in range(1, settings.max_steps + 1):
        # The gradient of the mean cross-entropy (sigmoid or softmax) is (p - y) / n.
        error = (_predict(x, w, b, multi_label) - y) / n
        grad_w = x.T @ error + l2 * w
        grad_b = error.sum(axis=0)
        for param, grad, m, v in ((w, grad_w, moments[0], moments[1]),
                                  (b, grad_b, moments[2], moments[3])):
            m *= 0.9
            m += 0.1 * grad
            v *= 0.999
            v += 0.001 * grad ** 2
            param -= settings.learning_rate * (m / (1 - 0.9 ** step)) / (
                np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
        if step % settings.eval_every == 0:
            val_map = fast_macro_map(y_val, _predict(x_val, w, b, multi_label))
            if best["step"] == 0 or val_map > best["val_map"] + 1e-6:  # NaN: the first check
                best.update(val_map=val_map, w=w.copy(), b=b.copy(), step=step)
                stale = 0
            else:
                stale += 1
                if stale >= settings.patience:
                    break
    return best


def ridge_r2(x_train, y_train, x_val, y_val, x_test, y_test, alphas=ProbeSettings.ridge_alphas,
             seed=0):
    """Held-out R² of ridge regression x -> y, and the shuffled-pairing null.

    x and y are standardised on the training rows, so R² = 1 - SSE / SS(y about the training
    mean), summed over all dimensions of y. Alpha is chosen on validation R². The null fits the
    same way after the training and validation rows of y are shuffled (a fixed permutation of
    `seed`) and is scored on the true test pairs.

    Returns {"r2", "null_r2", "alpha", "null_alpha", "test_prediction", "test_target"} where
    the last two (standardised) let a caller compute R² on a subset of the test rows.
    """
    x_train, x_val, x_test = standardise(x_train, x_val, x_test)
    y_train, y_val, y_test = standardise(y_train, y_val, y_test)
    val_basis, test_basis, train_side, eigenvalues = _ridge_basis(x_train, x_val, x_test)
    scale = float(eigenvalues.sum()) / len(eigenvalues)  # the mean squared singular value
    rng = np.random.default_rng(seed)
    shuffled = (y_train[rng.permutation(len(y_train))], y_val[rng.permutation(len(y_val))])

    def fit(train_targets, val_targets):
        projected = train_side(train_targets)
        best = None
        for alpha in alphas:
            solved = projected / (eigenvalues + alpha * scale)[:, None]
            r2 = r2_score(val_targets, val_basis @ solved)
            if best is None or r2 > best[0]:
                best = (r2, alpha, solved)
        return best[1], test_basis @ best[2]

    alpha, prediction = fit(y_train, y_val)
    null_alpha, null_prediction = fit(*shuffled)
    return {"r2": r2_score(y_test, prediction), "null_r2": r2_score(y_test, null_prediction),
            "alpha": alpha, "null_alpha": null_alpha, "test_prediction": prediction,
            "null_prediction": null_prediction, "test_target": y_test}


def _ridge_basis(x_train, x_val, x_test):
    """The eigen-decomposition that makes every alpha of ridge regression one small product,
    from the smaller Gram matrix: primal (d x d) when d <= n, kernel (n x n) otherwise.
    Prediction of rows x for a penalty alpha: basis(x) @ (train_side(Y) / (eigenvalues + alpha)).
    """
    x_train = x_train.astype(np.float64)
    n, d = x_train.shape
    if d <= n:  # W = V diag(1 / (λ + α)) Vᵀ Xᵀ Y
        eigenvalues, v = np.linalg.eigh(x_train.T @ x_train)
        return (x_val @ v, x_test @ v, lambda y: v.T @ (x_train.T @ y),
                np.maximum(eigenvalues, 0.0))
    # W = Xᵀ U diag(1 / (λ + α)) Uᵀ Y
    eigenvalues, u = np.linalg.eigh(x_train @ x_train.T)
    return ((x_val @ x_train.T) @ u, (x_test @ x_train.T) @ u, lambda y: u.T @ y,
            np.maximum(eigenvalues, 0.0))


def r2_score(target, prediction):
    """1 - SSE / SS(target), targets already centred on the training mean (so SS is about
    that mean, not the subset's own). NaN for no rows."""
    total = float(np.sum(np.square(target)))
    if len(target) == 0 or total == 0:
        return float("nan")
    return 1.0 - float(np.sum(np.square(target - prediction))) / total
