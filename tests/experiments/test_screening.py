import math
import subprocess
import sys

import pandas as pd
import pytest

from cfimage import screen
from cfimage.errors import UserError
from cfimage.experiments import screening

BASE_TEST = [0.40, 0.50, 0.60]


def _rows(arm, cf_weight, val, test):
    return [dict(arm=arm, label_ratio=0.1, cf_weight=cf_weight, seed=seed, val_map=v,
                 test_map=t, test_precision_at_1=0.5) for seed, (v, t) in enumerate(zip(val, test))]


def _write(directory, rows):
    directory.mkdir()
    pd.DataFrame(rows).to_csv(directory / "results.csv", index=False)
    return str(directory)


def _experiments(tmp_path, base_test=BASE_TEST):
    image_only = _rows("image_only", 0.0, [0.5] * 3, BASE_TEST)
    a = _write(tmp_path / "a", image_only
               + _rows("multitask", 1.0, [0.6] * 3, [0.44, 0.52, 0.66])   # diffs .04 .02 .06
               + _rows("multitask", 2.0, [0.4] * 3, [0.90, 0.90, 0.90]))  # better test, worse val
    b = _write(tmp_path / "b", _rows("image_only", 0.0, [0.5] * 3, base_test)
               + _rows("cosine", 1.0, [0.55] * 3, [0.41, 0.49, 0.60]))     # diffs .01 -.01 0
    return {"a": a, "b": b}


def test_gains_holm_and_choice_by_hand(tmp_path):
    named = _experiments(tmp_path)
    tables = screening.read_results(named)
    baseline = screening.shared_baseline(tables)
    assert len(baseline) == 3  # the two experiments' image-only cells merged
    rows = {r["option"]: r for r in screening.candidates(tables, baseline)}
    # a: λ = 1 chosen on validation (0.6 > 0.4) although λ = 2 wins on test.
    assert rows["a"]["cf_weight"] == 1.0 and rows["a"]["val_map"] == pytest.approx(0.6)
    assert rows["a"]["gain"] == pytest.approx(8.0)  # mean diff 0.04 / image-only's 0.5
    # Paired t: t = 0.04 / (0.02 / sqrt 3) = 2 sqrt 3; with 2 degrees of freedom the
    # two-sided p is 1 - t / sqrt(t^2 + 2) = 1 - sqrt(12 / 14).
    p_a = 1 - math.sqrt(12 / 14)
    assert rows["a"]["p_value"] == pytest.approx(p_a)
    assert rows["b"]["gain"] == pytest.approx(0.0, abs=1e-9)
    assert rows["b"]["p_value"] == pytest.approx(1.0)
    # Holm over the 2 tests: the smaller p doubled; the larger kept at 1.
    assert rows["a"]["p_holm"] == pytest.approx(2 * p_a)
    assert rows["b"]["p_holm"] == pytest.approx(1.0)
    assert not rows["a"]["significant"]
    chosen = screening.choose(tables, baseline, list(rows.values()))
    best, scores, seeds = chosen[0.1]
    assert best == ("a", "multitask", 1.0) and seeds == 3
    assert scores[("—", "image_only", 0.0)] == pytest.approx(0.5)
    assert scores[("b", "cosine", 1.0)] == pytest.approx(0.55)


def test_report_files(tmp_path):
    rows = screening.write(str(tmp_path / "out"), _experiments(tmp_path), "cmd", log=lambda m: 0)
    text = (tmp_path / "out" / "screening.md").read_text()
    assert len(rows) == 2 and "Holm-corrected together" in text
    assert "| 0.1 | 3 | a: multitask λ=1 | 0.6000 | 0.5000 | b: cosine λ=1 (0.5500) | +8.0%" \
        in text
    assert len(pd.read_csv(tmp_path / "out" / "screening.csv")) == 2
    chosen = pd.read_csv(tmp_path / "out" / "chosen.csv").iloc[0]
    assert (chosen.option, chosen.arm, chosen.cf_weight, chosen.seeds) == ("a", "multitask", 1, 3)


def test_unpaired_baselines_are_refused(tmp_path):
    named = _experiments(tmp_path, base_test=[0.40, 0.50, 0.61])
    with pytest.raises(UserError, match="seed 2 differ between a, b"):
        screening.shared_baseline(screening.read_results(named))


def test_bad_results_entries(tmp_path):
    with pytest.raises(UserError, match="not NAME=DIR"):
        screen.parse_results(["nodir"])
    with pytest.raises(UserError, match="given twice"):
        screen.parse_results(["a=x", "a=y"])
    with pytest.raises(UserError, match="no results.csv"):
        screening.read_results({"a": str(tmp_path)})
    (tmp_path / "results.csv").write_text("arm,seed\nimage_only,0\n")
    with pytest.raises(UserError, match="lacks the columns"):
        screening.read_results({"a": str(tmp_path)})


def test_command_line(tmp_path):
    named = _experiments(tmp_path)
    out = tmp_path / "report"
    command = [sys.executable, "-m", "cfimage.screen", f"--out={out}",
               "--results=" + ",".join(f"{k}={v}" for k, v in named.items())]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "chosen on validation a: multitask λ=1" in done.stdout
    assert (out / "screening.md").is_file()
    bad = subprocess.run(command[:-1] + ["--results=a=" + str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "cfimage.screen: error: --results" in bad.stderr


def test_an_options_own_knob_is_chosen_on_validation(tmp_path):
    named = _experiments(tmp_path)
    # a2: a's option at another value of its knob; better on validation (0.65 > 0.6), worse
    # on test (diffs .01 .01 .01).
    named["a2"] = _write(tmp_path / "a2", _rows("image_only", 0.0, [0.5] * 3, BASE_TEST)
                         + _rows("multitask", 1.0, [0.65] * 3, [0.41, 0.51, 0.61]))
    tables = screening.read_results(named)
    baseline = screening.shared_baseline(tables)
    rows = {r["option"]: r for r in screening.candidates(tables, baseline, {"a2": "a"})}
    assert rows["a"]["knob_lost_to"] == "a2"
    assert "p_value" not in rows["a"] and "p_holm" not in rows["a"]  # untested
    assert rows["a2"]["gain"] == pytest.approx(2.0) and "knob_lost_to" not in rows["a2"]
    # Holm over the 2 tested rows (a2, b) only: b's p is 1; a2's differences are constant.
    assert rows["b"]["p_holm"] == pytest.approx(1.0)
    best, scores, _ = screening.choose(tables, baseline, list(rows.values()))[0.1]
    assert best == ("a2", "multitask", 1.0) and ("a", "multitask", 1.0) not in scores
    rows = screening.write(str(tmp_path / "out"), named, "cmd", log=lambda m: 0,
                           same_option={"a2": "a"})
    text = (tmp_path / "out" / "screening.md").read_text()
    assert "| 0.1 | a (validation chose a2) | multitask | 1 |" in text
    with pytest.raises(UserError, match="no experiment named 'c'"):
        screening.candidates(tables, baseline, {"c": "a"})
