"""The test split, read once, at the checkpoint chosen on validation mAP.

The top-level figures are those of the cold view: every test item, classified without its CF
vector (what any arm does for a new image). `views` adds the warm view, the test items that
have a vector, given it (a model without the CF input scores them as in the cold view), and
`warm_buckets` both views on the warm items bucketed by interaction count
(cfimage/stage2/hybrid.py)."""

import numpy as np

from cfimage.stage2 import hybrid
from cfimage.stage2 import model as model_lib
from cfimage.stage2.metrics import evaluate_scores, left_out_notes


def evaluate_test(model, best, dataset, labels, label_names, has_vector=None,
                  interaction_counts=None, bucket_edges=(1, 10, 100, 1000), log=print):
    """Loads the best checkpoint (a callbacks.BestCheckpoint record) into `model` and returns
    evaluate_scores on the test `dataset` (labels aligned with it) in the cold view, with
    the views and warm buckets when `has_vector` (aligned too) is given, logging the figures.
    A hybrid model's `dataset` gives the items' CF inputs (the warm view)."""
    model.load_weights(best.path)
    given = model.predict(dataset, verbose=0)["labels"]
    cold = (model.predict(hybrid.cold_view(dataset), verbose=0)["labels"]
            if model_lib.is_hybrid(model) else given)
    test = evaluate_scores(labels, cold, label_names)
    log(f"test (checkpoint of epoch {best.best_epoch}, chosen on validation mAP "
        f"{best.best:.4f}): macro mAP {test['macro_map']:.4f}, "
        f"precision@1 {test['precision_at_1']:.4f} on {test['num_items']} items")
    for note in left_out_notes(test):
        log(note)
    for name, ap in sorted(test["per_class_ap"].items(), key=lambda kv: -kv[1]):
        log(f"  AP {name:<24s} {ap:.4f}")
    if has_vector is not None:
        test.update(views(labels, cold, given, label_names, has_vector, interaction_counts,
                          bucket_edges, log))
    return test


def _summary(labels, scores, label_names):
    metrics = evaluate_scores(labels, scores, label_names)
    return {key: metrics[key] for key in ("macro_map", "precision_at_1", "num_items")}


def views(labels, cold, given, label_names, has_vector, interaction_counts, bucket_edges,
          log=print):
    """{"views": {"cold", "warm"}, "warm_buckets": [...]}: the cold view on every item, the
    warm view (scores `given` the vectors) on the items with a vector; per interaction-count
    bucket of those (when `interaction_counts` is given), both views on its items."""
    labels, has_vector = np.asarray(labels), np.asarray(has_vector, bool)
    cold, given = np.asarray(cold), np.asarray(given)
    warm = {"cold": _summary(labels, cold, label_names),
            "warm": _summary(labels[has_vector], given[has_vector], label_names)}
    log(f"test views: cold (no CF input) macro mAP {warm['cold']['macro_map']:.4f} on "
        f"{warm['cold']['num_items']} items; warm (CF vector given) "
        f"{warm['warm']['macro_map']:.4f} on {warm['warm']['num_items']} items with a vector")
    result = {"views": warm, "warm_buckets": []}
    if interaction_counts is None:
        return result
    counts = np.asarray(interaction_counts)[has_vector]
    for name, rows in hybrid.buckets(counts, list(bucket_edges)):
        if not rows.any():
            continue
        bucket_labels = labels[has_vector][rows]
        row = {"interactions": name, "num_items": int(rows.sum()),
               "warm_map": _summary(bucket_labels, given[has_vector][rows],
                                    label_names)["macro_map"],
               "cold_map": _summary(bucket_labels, cold[has_vector][rows],
                                    label_names)["macro_map"]}
        result["warm_buckets"].append(row)
        log(f"  warm items with {name} interactions: {row['num_items']} items, macro mAP "
            f"{row['warm_map']:.4f} with the vector, {row['cold_map']:.4f} without")
    return result
