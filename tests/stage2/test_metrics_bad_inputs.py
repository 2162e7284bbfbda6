"""Degenerate labels (cfimage/stage2/metrics.py, data.check_trainable, data.split_class_notes):
a catalogue of one class, or too few items, is refused before stage 1; a class that a split
leaves without positives, or on every item, is named; and no metric reports a perfect score
that means nothing."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from cfimage.errors import UserError
from cfimage.stage2 import data, metrics
from tests.conftest import write_catalogue

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_a_class_on_every_item_is_left_out_of_map_and_named():
    labels = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 0], [1, 0, 0]], np.float32)
    scores = np.array([[0.1, 0.9, 0.2], [0.2, 0.1, 0.8], [0.3, 0.2, 0.1], [0.9, 0.8, 0.7]])
    result = metrics.evaluate_scores(labels, scores, ["always", "b", "c"])
    assert result["classes_on_every_item"] == ["always"]
    assert set(result["per_class_ap"]) == {"b", "c"}
    # b: positives 0 and 2 ranked 1st and 3rd of (0.9, 0.8, 0.2, 0.1): AP = (1 + 2/3) / 2.
    assert result["per_class_ap"]["b"] == pytest.approx((1 + 2 / 3) / 2)
    assert result["macro_map"] == pytest.approx(((1 + 2 / 3) / 2 + 1.0) / 2)
    assert metrics.left_out_notes(result) == [
        "test: 1 class(es) left out of macro mAP, every test item has them (AP would be 1.0 "
        "for any scores): ['always']"]


@pytest.mark.parametrize("labels, names", [
    (np.ones((4, 1)), ["only"]),  # one class: everything ranks first
    (np.array([[1, 0], [1, 0], [1, 0]]), ["x", "y"]),  # x everywhere, y nowhere
])
def test_no_perfect_score_that_means_nothing(labels, names):
    scores = np.random.default_rng(0).random(labels.shape)
    result = metrics.evaluate_scores(labels, scores, names)
    assert math.isnan(result["macro_map"])
    if len(names) == 1:
        assert math.isnan(result["precision_at_1"])
    notes = metrics.left_out_notes(result)
    assert notes[-1] == ("test: no class has both positive and negative items, so macro mAP is "
                         "NaN: it would mean nothing")


def test_split_class_notes_name_classes_seen_only_in_train_or_only_in_test():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1], [1, 0, 0]], np.float32)
    labelled = np.array([True, True, True, True, False])
    splits = {"train": np.array([0, 1, 2, 4]), "validation": np.array([]), "test": np.array([3])}
    notes = data.split_class_notes(labels, labelled, splits, ["a", "b", "c"])
    assert notes == [
        "warning: 1 class(es) no labelled training item has them: the model never sees a "
        "positive (they are only in validation or test): ['c']",
        "warning: 1 class(es) no test item has them: they are left out of test mAP: ['b']",
        "warning: 2 class(es) every test item has them: AP would be 1.0 for any scores, so they "
        "are left out of test mAP: ['a', 'c']"]


@pytest.mark.parametrize("labels, names, message", [
    (np.ones((50, 1)), ["cat"], "items.csv: only 1 class(es) ['cat']: a classifier needs at "
     "least two"),
    (np.eye(2), ["cat", "dog"], "items.csv: 2 item(s), --split=0.7,0.1,0.2: only 2 labelled "
     "items: too few for a validation split of 1 and a test split of 1"),
])
def test_untrainable_catalogues_are_refused(labels, names, message):
    with pytest.raises(UserError) as error:
        data.check_trainable(labels, labels.sum(axis=1) > 0, names, (0.7, 0.1, 0.2),
                             "items.csv")
    assert str(error.value).startswith(message), str(error.value)
    data.check_trainable(np.eye(2)[np.arange(10) % 2], np.ones(10, bool), ["a", "b"],
                         (0.7, 0.1, 0.2), "items.csv")  # ten items of two classes: fine


@pytest.mark.slow
@pytest.mark.parametrize("items, message", [
    ("item_id,image,labels\na,images/a.png,cat\nb,images/b.png,cat\nc,images/c.png,cat\n",
     "only 1 class(es) ['cat']"),
    ("item_id,image,labels\na,images/a.png,cat\nb,images/b.png,dog\n",
     "2 item(s), --split=0.7,0.1,0.2: only 2 labelled items: too few"),
])
def test_the_run_refuses_them_before_stage_1_trains(tmp_path, items, message):
    root = write_catalogue(tmp_path / "catalogue", items,
                           "user_id,item_id\nu1,a\nu1,b\nu2,a\nu2,b\n",
                           ["images/a.png", "images/b.png", "images/c.png"])
    result = subprocess.run(
        [sys.executable, "-m", "cfimage.train", f"--catalogue={root}",
         f"--workdir={tmp_path}/run", "--image_size=32", "--threads=1"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cfimage: error: {root}/items.csv: ") and message in last, last
    assert "stage 1" not in result.stdout and "Traceback" not in result.stderr
