"""python -m cfimage.diagnose: its statistics, probes and verdict, and the entry point."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cfimage.experiments import diagnose_report, diagnose_runs, probes
from cfimage.stage2.metrics import evaluate_scores

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T_975 = {1: 12.706204736174705, 2: 4.302652729911275}  # Student t quantiles (any t table)


def test_mean_ci_is_the_student_t_interval():
    # mean 2, sample sd 1, standard error 1/sqrt(3); t(0.975, 2 df) = 4.3027
    mean, low, high, n = diagnose_report.mean_ci([1.0, 2.0, 3.0, np.nan])
    half = T_975[2] / np.sqrt(3)
    assert (mean, n) == (2.0, 3)
    assert low == pytest.approx(2.0 - half) and high == pytest.approx(2.0 + half)
    assert diagnose_report.mean_ci([5.0, 5.0])[:3] == (5.0, 5.0, 5.0)  # no spread
    assert np.isnan(diagnose_report.mean_ci([5.0])[1])  # one value: no interval


def test_paired_relative_change_and_difference():
    # per-split gains 0.22/0.2 - 1 = 0.1 and 0.26/0.2 - 1 = 0.3: mean 0.2, sd 0.1414, se 0.1
    mean, low, high, n = diagnose_report.paired_relative_change([0.22, 0.26, 0.5],
                                                                [0.2, 0.2, 0.0])
    assert n == 2 and mean == pytest.approx(0.2)  # the zero baseline is left out
    assert (low, high) == pytest.approx((0.2 - T_975[1] * 0.1, 0.2 + T_975[1] * 0.1))
    # R² minus null per split: 0.07, 0.06, 0.08 -> mean 0.07, sd 0.01
    mean, low, high, n = diagnose_report.paired_difference([0.05, 0.04, 0.06], [-0.02] * 3)
    assert mean == pytest.approx(0.07)
    assert high - mean == pytest.approx(T_975[2] * 0.01 / np.sqrt(3))


def test_r2_is_about_the_training_mean():
    target = np.array([[1.0], [-1.0]])
    assert probes.r2_score(target, np.array([[0.5], [-0.5]])) == pytest.approx(0.75)  # 1-.5/2
    assert probes.r2_score(target, np.zeros((2, 1))) == 0.0
    assert np.isnan(probes.r2_score(np.zeros((0, 1)), np.zeros((0, 1))))


def test_ridge_r2_finds_a_linear_signal_and_the_null_does_not():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 20))
    y = x[:, :3] @ rng.standard_normal((3, 4)) + 0.5 * rng.standard_normal((300, 4))
    fit = probes.ridge_r2(x[:200], y[:200], x[200:240], y[200:240], x[240:], y[240:])
    assert fit["r2"] > 0.6
    assert -0.2 < fit["null_r2"] < 0.05
    unrelated = probes.ridge_r2(x[:200], rng.standard_normal((200, 4)), x[200:240],
                                rng.standard_normal((40, 4)), x[240:],
                                rng.standard_normal((60, 4)))
    assert unrelated["r2"] < 0.05
    # More features than training rows: the kernel form gives the same predictions.
    wide = rng.standard_normal((300, 250))
    primal = probes.ridge_r2(wide[:260], y[:260], wide[260:280], y[260:280], wide[280:],
                             y[280:])
    kernel = probes.ridge_r2(wide[:200], y[:200], wide[260:280], y[260:280], wide[280:],
                             y[280:])
    assert np.isfinite(primal["r2"]) and np.isfinite(kernel["r2"])


def test_fast_macro_map_agrees_with_evaluate_scores():
    rng = np.random.default_rng(1)
    labels = (rng.random((50, 6)) < 0.3).astype(np.float32)
    labels[:, 4] = 0  # a class without positives does not count
    scores = rng.random((50, 6))
    names = [str(c) for c in range(6)]
    assert probes.fast_macro_map(labels, scores) == pytest.approx(
        evaluate_scores(labels, scores, names)["macro_map"])


@pytest.mark.parametrize("multi_label", [True, False])
def test_label_probe_learns_a_linear_rule(multi_label):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((400, 10))
    logits = x[:, :3]
    if multi_label:
        labels = (logits > 0.5).astype(np.float32)
    else:
        labels = np.eye(3, dtype=np.float32)[logits.argmax(axis=1)]
    fitted = probes.label_probe(x[:250], labels[:250], x[250:300], labels[250:300], x[300:],
                                multi_label)
    result = evaluate_scores(labels[300:], fitted.test_scores, ["a", "b", "c"])
    assert result["macro_map"] > 0.9
    assert fitted.step > 0 and fitted.l2 in probes.ProbeSettings().l2_grid
    assert fitted.val_map == pytest.approx(
        probes.fast_macro_map(labels[250:300], fitted.validation_scores))
    noise = probes.label_probe(rng.standard_normal((250, 10)), labels[:250],
                               rng.standard_normal((50, 10)), labels[250:300],
                               rng.standard_normal((100, 10)), multi_label)
    assert evaluate_scores(labels[300:], noise.test_scores, ["a", "b", "c"])["macro_map"] < 0.7


def test_fusion_weight_is_chosen_on_validation():
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    good = probes.ProbeResult(test_scores=np.array([[0.9, 0.1]]),
                              validation_scores=labels * 0.8 + 0.1, l2=0, step=1, val_map=1)
    wrong = probes.ProbeResult(test_scores=np.array([[0.1, 0.9]]),
                               validation_scores=1 - labels, l2=0, step=1, val_map=0)
    scores, weight = probes.fuse(wrong, good, labels)
    # Every w > 0.5 ranks the validation items right; the smallest of them is 0.6.
    assert weight == 0.6
    np.testing.assert_allclose(scores, [[0.4 * 0.1 + 0.6 * 0.9, 0.4 * 0.9 + 0.6 * 0.1]])
    assert probes.fuse(good, wrong, labels)[1] == 0.0


def test_interaction_bins_are_quantiles_with_a_bin_for_no_interactions():
    counts = [0, 1, 1, 2, 3, 5, 8, 13, 100]
    bins, names = diagnose_runs.interaction_bins(counts, 4)
    # The 8 positive counts' quartiles ("lower": positions 1.75, 3.5, 5.25 rounded down) are
    # the sorted values #1, #3, #5 = 1, 3, 8: the bins end there and at the maximum.
    assert names == ["0", "1", "2–3", "5–8", "13–100"]
    assert bins.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    bins, names = diagnose_runs.interaction_bins([7, 7, 7], 4)  # ties: one bin
    assert names == ["7"] and bins.tolist() == [0, 0, 0]


def _summaries(gains, r2_minus_null, splits=20):
    rng = np.random.default_rng(0)
    maps, r2 = [], []
    for split in range(splits):
        image = 0.3 + 0.01 * rng.standard_normal()
        for probe, value in [("image", image), ("cf", image * 1.5),
                             ("image+cf", image * (1 + gains + 0.01 * rng.standard_normal()))]:
            maps.append({"split": split, "label_ratio": 0.1, "probe": probe, "bin": "all items",
                         "map": value, "test_items": 100, "train_labelled": 10})
        r2.append({"split": split, "bin": "all items",
                   "r2": r2_minus_null - 0.02 + 0.01 * rng.standard_normal(),
                   "null_r2": -0.02, "test_items": 100})
    return diagnose_report.summarise(pd.DataFrame(maps), pd.DataFrame(r2))


@pytest.mark.parametrize("gain, transfer, expected", [
    (0.0, 0.3, "no_headroom"), (0.3, 0.02, "headroom_no_transfer"), (0.3, 0.3, "promising")])
def test_verdict_follows_the_stated_thresholds(gain, transfer, expected):
    key, paragraph = diagnose_report.verdict(*_summaries(gain, transfer))
    assert key == expected
    assert "more of the CF vectors' variance" in paragraph


SMALL = ("--demo_items=120", "--demo_users=60", "--image_size=32", "--splits=3",
         "--cf_epochs=2", "--probe_steps=60")


def _diagnose(*args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "cfimage.diagnose", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


@pytest.mark.slow
def test_diagnose_runs_on_the_demo_catalogue_and_reuses_its_work(tmp_path):
    workdir = tmp_path / "run"
    first = _diagnose(f"--workdir={workdir}", *SMALL)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[diagnose] split 3/3" in first.stdout
    report = (workdir / "diagnose.md").read_text()
    for heading in ("## Verdict", "Thresholds:", "## Label probes", "### Label ratio 0.1",
                    "### Label ratio 0.3", "### Label ratio 1", "held-out R²"):
        assert heading in report
    for plot in ("diagnose_map.png", "diagnose_bins.png", "diagnose_r2.png"):
        assert (workdir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    maps = pd.read_csv(workdir / "diagnose_map.csv")
    overall = maps[maps.bin == "all items"]
    assert len(overall) == 3 * 3 * 3  # splits x label ratios x probes
    assert overall["map"].between(0, 1).all()
    r2 = pd.read_csv(workdir / "diagnose_r2.csv")
    assert sorted(r2[r2.bin == "all items"].split) == [0, 1, 2]

    # The flags it wrote are a --flagfile that repeats the run.
    again = _diagnose(f"--flagfile={workdir / 'diagnose_flags.txt'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "stage 1 already done in this workdir" in again.stdout
    assert "240 read from the cache" in (workdir / "diagnose.md").read_text()
    assert "computing" not in again.stdout  # no feature was extracted again
    # Same splits, same features: the same numbers.
    pd.testing.assert_frame_equal(pd.read_csv(workdir / "diagnose_map.csv"), maps)


@pytest.mark.slow
def test_diagnose_reports_bad_flags_in_one_line(tmp_path):
    result = _diagnose(f"--workdir={tmp_path}", *SMALL, "--label_ratios=0.1,2")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "cfimage: error: --label_ratios=0.1,2: each must be in (0, 1], e.g. 0.1,0.3,1.0")


def test_any_catalogue_shape_single_label_missing_vectors_labels_and_classes(tmp_path):
    """Single-label, unlabelled items, items without a CF vector or without interactions, a
    class too rare to reach every split, a label ratio too small to keep any label."""
    rng = np.random.default_rng(3)
    n = 90
    classes = rng.integers(0, 2, n)
    classes[:3] = 2  # a rare class: some validation or test splits have none
    labels = np.eye(3, dtype=np.float32)[classes]
    labelled = np.ones(n, bool)
    labelled[80:] = False  # unlabelled items only train
    labels[~labelled] = 0
    has_vector = np.ones(n, bool)
    has_vector[::6] = False
    vectors = np.where(has_vector[:, None], labels @ rng.standard_normal((3, 5)), 0.0)
    counts = rng.integers(1, 50, n)
    counts[has_vector == 0] = 0
    bins, bin_names = diagnose_runs.interaction_bins(counts, 3)
    inputs = diagnose_runs.DiagnoseInputs(
        image_features=labels @ rng.standard_normal((3, 16)) + rng.standard_normal((n, 16)),
        vectors=vectors, has_vector=has_vector, labels=labels, labelled=labelled,
        label_names=["a", "b", "c"], multi_label=False, bins=bins, bin_names=bin_names)
    maps, r2 = diagnose_runs.run_splits(inputs, 3, [1e-4, 1.0], (0.7, 0.1, 0.2), 0,
                                        probes.ProbeSettings(max_steps=40), log=lambda _: None)
    overall = maps[maps.bin == diagnose_runs.ALL]
    assert len(overall) == 3 * 2 * 3
    assert overall[overall.label_ratio == 1e-4]["map"].isna().all()  # no label kept
    assert overall[overall.label_ratio == 1.0]["map"].between(0, 1).all()
    assert set(maps.bin) == {diagnose_runs.ALL, *bin_names} and "0" in bin_names
    assert r2[r2.bin == "0"].test_items.eq(0).all()  # items without interactions: no vector
    key = diagnose_report.write_report(str(tmp_path), ["# test"], maps, r2, log=lambda _: None)
    assert key in ("no_headroom", "headroom_no_transfer", "promising")
    assert "n/a" in (tmp_path / "diagnose.md").read_text()
    assert (tmp_path / "diagnose_bins.png").exists()
