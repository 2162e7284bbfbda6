"""The test split, read once, at the checkpoint chosen on validation mAP."""

from cfimage.stage2.metrics import evaluate_scores, left_out_notes


def evaluate_test(model, best, dataset, labels, label_names, log=print):
    """Loads the best checkpoint (a callbacks.BestCheckpoint record) into `model` and returns
    evaluate_scores on the test `dataset` (labels aligned with it), logging the figures."""
    model.load_weights(best.path)
    scores = model.predict(dataset, verbose=0)["labels"]
    test = evaluate_scores(labels, scores, label_names)
    log(f"test (checkpoint of epoch {best.best_epoch}, chosen on validation mAP "
        f"{best.best:.4f}): macro mAP {test['macro_map']:.4f}, "
        f"precision@1 {test['precision_at_1']:.4f} on {test['num_items']} items")
    for note in left_out_notes(test):
        log(note)
    for name, ap in sorted(test["per_class_ap"].items(), key=lambda kv: -kv[1]):
        log(f"  AP {name:<24s} {ap:.4f}")
    return test
