import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cfimage.experiments import report


def _results():
    rows = []
    rng = np.random.default_rng(0)
    for seed in range(5):
        base = 0.30 + 0.02 * rng.normal()
        rows.append(dict(arm="image_only", label_ratio=0.1, cf_weight=0.0, seed=seed,
                         val_map=base, test_map=base, test_precision_at_1=0.5))
        for cf_weight, lift, val in ((1.0, 0.01, 0.0), (2.0, 0.03, 0.05)):
            rows.append(dict(arm="multitask", label_ratio=0.1, cf_weight=cf_weight, seed=seed,
                             val_map=base + val, test_map=base + lift + 0.001 * seed,
                             test_precision_at_1=0.6))
    return pd.DataFrame(rows)


def test_lambda_is_chosen_on_validation_and_gain_is_paired(tmp_path):
    results = _results()
    assert report.choose_lambda(results)[("multitask", 0.1)] == 2.0
    # A partial grid compares λ values on the seeds all of them have finished.
    partial = results.drop(results[(results.cf_weight == 2.0) & (results.seed > 0)].index)
    partial.loc[(partial.cf_weight == 1.0) & (partial.seed > 0), "val_map"] += 1.0
    assert report.choose_lambda(partial)[("multitask", 0.1)] == 2.0
    rows = {r["arm"]: r for r in report.summarise(results)}
    multitask, baseline = rows["multitask"], rows["image_only"]
    chosen = results[(results.arm == "multitask") & (results.cf_weight == 2.0)]
    base = results[results.arm == "image_only"]
    diff = chosen.test_map.to_numpy() - base.test_map.to_numpy()
    assert multitask["map"] == pytest.approx(chosen.test_map.mean())
    assert multitask["gain"] == pytest.approx(100 * diff.mean() / base.test_map.mean())
    half = stats.t.ppf(0.975, 4) * diff.std(ddof=1) / np.sqrt(5)
    assert multitask["gain_ci"] == pytest.approx(100 * half / base.test_map.mean())
    assert multitask["p_value"] < 0.001 and "gain" not in baseline
    table = report.write_report(results, str(tmp_path), command="x")
    assert "| 0.1 | multitask | 2 | 5 |" in table
    # Every λ is listed with the validation mAP that chose it; test figures only for reading.
    swept = {r["cf_weight"]: r for r in report.sweep(results)}
    assert set(swept) == {1.0, 2.0} and swept[2.0]["chosen"] and not swept[1.0]["chosen"]
    lambda_1 = results[(results.arm == "multitask") & (results.cf_weight == 1.0)]
    assert swept[1.0]["val_map"] == pytest.approx(lambda_1.val_map.mean())
    assert swept[1.0]["gain"] == pytest.approx(
        100 * (lambda_1.test_map.to_numpy() - base.test_map.to_numpy()).mean()
        / base.test_map.mean())
    text = (tmp_path / "results.md").read_text()
    assert "## Every λ" in text and "| 0.1 | multitask | 2 (chosen) | 5 |" in text
    assert (tmp_path / "map_vs_label_ratio.png").stat().st_size > 1000
    assert (tmp_path / "gain_vs_label_ratio.png").stat().st_size > 1000


def test_mean_ci_of_known_values():
    mean, half = report.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))
    assert half == pytest.approx(4.302653 / np.sqrt(3))  # t(0.975, 2 df) from a table
    assert report.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.0)
    mean, half = report.mean_ci([0.7])
    assert mean == 0.7 and np.isnan(half)


def test_holm_of_hand_computed_values():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04; made non-decreasing: 0.06.
    np.testing.assert_allclose(report.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(report.holm([0.5, 0.001]), [0.5, 0.002])
    np.testing.assert_allclose(report.holm([0.9, 0.8]), [1.0, 1.0])  # 2 x 0.8 capped at 1
    np.testing.assert_allclose(report.holm([0.4, 0.3]), [0.6, 0.6])  # 0.4 < 0.6: monotone
    adjusted = report.holm([0.02, np.nan, 0.01])  # no test: NaN, and m = 2
    np.testing.assert_allclose(adjusted[[0, 2]], [0.02, 0.02])
    assert np.isnan(adjusted[1])
    assert report.holm([]).shape == (0,)


def test_every_comparison_of_the_table_is_holm_corrected_together(tmp_path):
    results = _results()
    # A second label ratio whose multitask arm gains nothing: two tests in all.
    more = results.copy()
    more["label_ratio"] = 1.0
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 0.01, size=len(more))
    more.loc[more.arm == "multitask", "test_map"] = (
        more.loc[more.arm == "multitask", "seed"].map(
            results[results.arm == "image_only"].set_index("seed").test_map)
        + noise[(more.arm == "multitask").to_numpy()])
    results = pd.concat([results, more], ignore_index=True)
    rows = [r for r in report.summarise(results) if r["arm"] == "multitask"]
    p_values = [r["p_value"] for r in rows]
    np.testing.assert_allclose([r["p_holm"] for r in rows], report.holm(p_values))
    gaining = [r for r in rows if r["label_ratio"] == 0.1][0]
    assert gaining["p_holm"] == pytest.approx(min(1.0, 2 * min(p_values)))
    assert gaining["significant"]
    assert not [r for r in rows if r["label_ratio"] == 1.0][0]["significant"]
    assert report.corrected_tests(report.summarise(results)) == 2
    table = report.write_report(results, str(tmp_path))
    assert "p (Holm, 2 tests)" in table
    line = [t for t in table.splitlines() if t.startswith("| 0.1 | multitask |")][0]
    assert line.endswith(f"| {gaining['p_holm']:.2g} | yes |")
    text = (tmp_path / "results.md").read_text()
    assert "all 2 comparisons with image-only in this table are Holm-corrected" in text


def test_cold_and_warm_views_are_compared_paired_with_image_only(tmp_path):
    rows = []
    for seed in range(4):
        for arm, cold, warm in (("image_only", 0.30, 0.31), ("hybrid", 0.29, 0.40)):
            rows.append(dict(arm=arm, label_ratio=1.0, cf_weight=0.0, seed=seed, val_map=cold,
                             test_map=cold, test_precision_at_1=0.5, test_cold_map=cold,
                             test_warm_map=warm + 0.01 * seed * (arm == "hybrid"),
                             **{"warm_map@1-9": warm, "cold_map@1-9": cold, "items@1-9": 7}))
    results = pd.DataFrame(rows)
    views = {r["arm"]: r for r in report.summarise_views(results)}
    assert views["image_only"]["warm"] == pytest.approx(0.31) and "gain" not in views[
        "image_only"]
    hybrid = views["hybrid"]
    assert hybrid["cold"] == pytest.approx(0.29) and hybrid["warm"] == pytest.approx(0.415)
    # Paired warm differences 0.09, 0.10, 0.11, 0.12 over image-only's 0.31.
    assert hybrid["gain"] == pytest.approx(100 * 0.105 / 0.31)
    assert hybrid["p_holm"] == pytest.approx(hybrid["p_value"])  # one test in the family
    report.write_report(results, str(tmp_path))
    text = (tmp_path / "results.md").read_text()
    assert "## Cold and warm test items" in text
    assert "| 1 | hybrid | 0 | 4 | 0.2900 ± 0.0000 | 0.4150 ± 0.0205 | +33.9% |" in text
    assert "| 1 | hybrid | 1-9 | 7 | 4 | 0.4000 | 0.2900 |" in text
    # Cells without views (an older metrics.json): no such section.
    report.write_report(results.drop(columns=["test_cold_map", "test_warm_map"]),
                        str(tmp_path))
    assert "Cold and warm" not in (tmp_path / "results.md").read_text()
