"""The one place where CF vectors become the regression targets of the "cf" head
(--cf_target). The transform is fit on the TRAINING items that have a vector, applied to every
item (so validation and test CF metrics read the same targets), and stored with the run: its
spec in config.json, the fitted numbers in <workdir>/cf_target.json and metrics.json
("cf_scaling"), and the export's `embed` signature maps predictions back with them.

  standardised  (v − mean) / s, one s for every dimension, so that the targets' RMS per
                dimension is --cf_target_scale (the default; what cfimage always did, keeps
                the paper's exponential loss in range)
  l2            v / ‖v‖: unit length, not centred (L2-normalised factors, Dieleman et al.)
  raw           v unchanged (the paper's official code regresses raw Mult-VAE rows + bias)
  pca_whiten:K  the top K principal components of the centred vectors, each scaled to RMS
                --cf_target_scale: the head predicts K numbers instead of d

The fitted transform ("cf_scaling") maps a target back to vector space:
    vector = target · matrix · scale + mean      (no "matrix": the identity)
l2 has no inverse; its map (mean 0, scale 1) gives the unit direction, which ranks items and
users by dot product (similar_items, audience) exactly as any positive multiple would.

numpy only.
"""

import numpy as np

from cfimage.errors import UserError

KINDS = ("standardised", "l2", "raw", "pca_whiten")
EPSILON = 1e-12


def parse(text):
    """--cf_target text -> (kind, K) with K None except for pca_whiten:K; None if invalid."""
    kind, _, count = str(text).partition(":")
    if kind == "pca_whiten":
        return (kind, int(count)) if count.isdigit() and int(count) >= 1 else None
    return (kind, None) if kind in KINDS and not count else None


def fit(vectors, has_vector, train_rows, spec="standardised", target_rms=0.5):
    """(targets, scaling): every item's target (zeros where has_vector is False) under the
    transform `spec` fit on the rows `train_rows` that have a vector; `scaling` is the
    JSON-ready record of the module docstring (kind, mean, scale, optional matrix, and the
    number of items it was fit on)."""
    parsed = parse(spec)
    if parsed is None:
        raise UserError(f"--cf_target={spec}: use standardised, l2, raw or pca_whiten:K "
                        "(K >= 1)")
    kind, count = parsed
    vectors = np.asarray(vectors, np.float64)
    dim = vectors.shape[1]
    fit_rows = np.asarray(train_rows)[has_vector[train_rows]]
    if len(fit_rows) == 0:
        raise UserError(f"--cf_target={spec}: no training item has a CF vector to fit the "
                        "transform on")
    present = vectors[fit_rows]
    scaling = {"kind": spec, "fit_items": int(len(fit_rows))}
    if kind == "raw":
        targets = vectors
        scaling.update(mean=[0.0] * dim, scale=1.0)
    elif kind == "l2":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        targets = vectors / np.maximum(norms, EPSILON)
        scaling.update(mean=[0.0] * dim, scale=1.0)
    elif kind == "standardised":
        mean = present.mean(axis=0)
        rms = float(np.sqrt(np.mean((present - mean) ** 2))) or 1.0
        scale = rms / target_rms
        targets = (vectors - mean) / scale
        scaling.update(mean=mean.tolist(), scale=scale)
    else:  # pca_whiten:K
        mean = present.mean(axis=0)
        centred = present - mean
        variances, directions = np.linalg.eigh(centred.T @ centred / len(present))
        order = np.argsort(-variances)
        variances, directions = variances[order], directions[:, order]
        # eigh's signs are arbitrary: make each direction's largest component positive.
        largest = directions[np.abs(directions).argmax(axis=0), np.arange(dim)]
        directions = directions * np.where(largest < 0, -1.0, 1.0)
        usable = int((variances > EPSILON * max(variances[0], EPSILON)).sum())
        if count > usable:
            raise UserError(f"--cf_target={spec}: the {len(fit_rows)} training vectors "
                            f"(dimension {dim}) vary in only {usable} directions; use "
                            f"pca_whiten:K with K <= {usable}")
        root = np.sqrt(variances[:count])
        # target = (v − mean) · directions_K / sqrt(variance) · target_rms
        targets = (vectors - mean) @ directions[:, :count] / root * target_rms
        scaling.update(mean=mean.tolist(), scale=1.0,
                       matrix=(directions[:, :count] * root / target_rms).T.tolist())
    targets = np.where(has_vector[:, None], targets, 0.0).astype(np.float32)
    return targets, scaling


def to_vectors(targets, scaling):
    """The inverse map of the module docstring: targets -> vector space."""
    targets = np.asarray(targets, np.float64)
    if "matrix" in scaling:
        targets = targets @ np.asarray(scaling["matrix"], np.float64)
    return targets * scaling["scale"] + np.asarray(scaling["mean"], np.float64)


def users_in_target_space(user_vectors, scaling):
    """User vectors u' with u' · target = u · vector + (a constant per user), so that score
    differences between two items are the same in both spaces: u' = scale · u · matrixᵀ."""
    users = np.asarray(user_vectors, np.float64) * scaling["scale"]
    if "matrix" in scaling:
        users = users @ np.asarray(scaling["matrix"], np.float64).T
    return users.astype(np.float32)
