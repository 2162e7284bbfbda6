"""Evaluation metrics: macro mean average precision, precision@1, per-class AP."""

import numpy as np
from sklearn.metrics import average_precision_score


def evaluate_scores(labels, scores, label_names):
    """Metrics of predicted `scores` against multi-hot `labels`, both (n, C).

    Macro mAP is the mean of per-class average precision over the classes whose AP says
    something about the scores: classes without a positive item have no AP (listed under
    "classes_without_positives"), and a class that every item has gets AP 1.0 whatever the
    scores (listed under "classes_on_every_item"); both are left out, so that a perfect score
    that means nothing is never reported. With no class left, macro mAP is NaN.
    precision@1 is the fraction of items whose highest-scoring class is one of their labels
    (NaN with fewer than two classes: it would be 1.0 for any scores).
    """
    labels = np.asarray(labels, np.float32)
    scores = np.asarray(scores, np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal (n, C)")
    per_class = {}
    without, everywhere = [], []
    for c, name in enumerate(label_names):
        positives = labels[:, c].sum()
        if positives == 0:
            without.append(name)
        elif positives == len(labels):
            everywhere.append(name)
        else:
            per_class[name] = float(average_precision_score(labels[:, c], scores[:, c]))
    top1 = scores.argmax(axis=1)
    precision = (float(labels[np.arange(len(labels)), top1].mean())
                 if len(label_names) > 1 and len(labels) else float("nan"))
    return {
        "macro_map": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "precision_at_1": precision,
        "per_class_ap": per_class,
        "classes_without_positives": without,
        "classes_on_every_item": everywhere,
        "num_items": int(len(labels)),
    }


def left_out_notes(metrics, split="test"):
    """Log lines naming the classes that evaluate_scores left out of macro mAP, and why."""
    notes = []
    if metrics["classes_without_positives"]:
        notes.append(f"{split}: {len(metrics['classes_without_positives'])} class(es) left out "
                     f"of macro mAP, no {split} item has them (AP is undefined): "
                     f"{metrics['classes_without_positives'][:20]}")
    if metrics.get("classes_on_every_item"):
        notes.append(f"{split}: {len(metrics['classes_on_every_item'])} class(es) left out of "
                     f"macro mAP, every {split} item has them (AP would be 1.0 for any scores): "
                     f"{metrics['classes_on_every_item'][:20]}")
    if not metrics["per_class_ap"]:
        notes.append(f"{split}: no class has both positive and negative items, so macro mAP is "
                     "NaN: it would mean nothing")
    return notes
