"""Evaluation metrics: macro mean average precision, precision@1, per-class AP."""

import numpy as np
from sklearn.metrics import average_precision_score


def evaluate_scores(labels, scores, label_names):
    """Metrics of predicted `scores` against multi-hot `labels`, both (n, C).

    Macro mAP is the mean of per-class average precision over the classes
    that have at least one positive item (AP is undefined without one; those
    classes are listed under "classes_without_positives"). precision@1 is the
    fraction of items whose highest-scoring class is one of their labels.
    """
    labels = np.asarray(labels, np.float32)
    scores = np.asarray(scores, np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal (n, C)")
    per_class = {}
    without = []
    for c, name in enumerate(label_names):
        if labels[:, c].sum() > 0:
            per_class[name] = float(average_precision_score(labels[:, c], scores[:, c]))
        else:
            without.append(name)
    top1 = scores.argmax(axis=1)
    return {
        "macro_map": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "precision_at_1": float(labels[np.arange(len(labels)), top1].mean()),
        "per_class_ap": per_class,
        "classes_without_positives": without,
        "num_items": int(len(labels)),
    }
