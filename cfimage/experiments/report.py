"""Experiment report: λ chosen on validation, mean ± 95% CI over seeds, paired tests with
Holm-corrected p-values, plots.

Each row of the main table compares one arm, at one label ratio and the λ chosen on validation
mAP, with image-only on the same seeds (paired t-test on test macro mAP). Every such
comparison is a test, so their p-values are corrected together with Holm's step-down method,
which holds the chance of any false "significant" at 5% without assuming the tests are
independent. λ is chosen on validation only; the test figures never enter the choice, so the
test p-value of the chosen λ is not made optimistic by it. The "Every λ" table's p-values
are for reading only: they are not corrected and nothing is chosen on them.

Cold and warm test items (cfimage/stage2/hybrid.py): when the cells report them, a second table
compares the arms, at the same chosen λ, on the cold view (every test item, CF vector
withheld) and the warm view (the test items with a vector, given it; arms without the CF input
score them from the image), with the paired warm gain over image-only (Holm-corrected as a
family of its own), and a third table gives the warm view per interaction-count bucket.
"""

import os

import numpy as np
from scipy import stats

BASELINE = "image_only"
ALPHA = 0.05  # family-wise error rate of the Holm-corrected comparisons


def holm(p_values):
    """Holm-adjusted p-values, in the order given: the i-th smallest of m is multiplied by
    m - i + 1, then made non-decreasing in that order and capped at 1. NaN (no test) stays
    NaN and does not count in m."""
    p_values = np.asarray(p_values, np.float64)
    adjusted = np.full(len(p_values), np.nan)
    tested = np.flatnonzero(~np.isnan(p_values))
    order = tested[np.argsort(p_values[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def mean_ci(values):
    """Mean and half-width of the 95% t-interval (nan half-width for one value, 0 for equal
    values)."""
    values = np.asarray(values, np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan")
    standard_error = stats.sem(values)
    if standard_error == 0:
        return mean, 0.0  # scipy's interval of a zero scale is nan, not a point
    _, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=standard_error)
    return mean, float(high - mean)


def choose_lambda(results):
    """Per (arm, label_ratio): the λ with the best mean validation mAP over seeds. While a
    grid is partly done, only the seeds that every λ has finished are compared."""
    chosen = {}
    for (arm, ratio), group in results.groupby(["arm", "label_ratio"]):
        seeds = group.groupby("cf_weight").seed.apply(set)
        common = set.intersection(*seeds)
        if common:
            group = group[group.seed.isin(common)]
        chosen[(arm, ratio)] = group.groupby("cf_weight").val_map.mean().idxmax()
    return chosen


def summarise_cell(results, cell, ratio, gain=True):
    """Test mAP and P@1 of one cell (indexed by seed), and its paired gain over image-only."""
    row = {}
    row["map"], row["map_ci"] = mean_ci(cell.test_map)
    row["p1"], row["p1_ci"] = mean_ci(cell.test_precision_at_1)
    baseline = results[(results.arm == BASELINE) & (results.label_ratio == ratio)]
    baseline = baseline.set_index("seed").test_map
    paired = cell.test_map.index.intersection(baseline.index)
    row["pairs"] = len(paired)
    diff = cell.test_map[paired] - baseline[paired]
    if gain and len(paired) >= 2:
        mean_diff, half = mean_ci(diff)
        reference = baseline[paired].mean()
        row["gain"] = 100 * mean_diff / reference
        row["gain_ci"] = 100 * half / reference
        row["p_value"] = float(stats.ttest_rel(cell.test_map[paired],
                                               baseline[paired]).pvalue)
    return row


def correct_together(rows):
    """Gives every row with a `p_value` its Holm-corrected `p_holm` over all of them and
    `significant` (corrected p below ALPHA); returns `rows`."""
    tested = [r for r in rows if "p_value" in r]
    for row, adjusted in zip(tested, holm([r["p_value"] for r in tested])):
        row["p_holm"] = float(adjusted)
        row["significant"] = bool(adjusted < ALPHA)  # NaN (identical differences): False
    return rows


def summarise(results):
    """One row per (label_ratio, arm) at the λ chosen on validation; the rows that test a gain
    over image-only get their Holm-corrected p-value (`p_holm`) over all those rows, and
    `significant` when it is below ALPHA."""
    chosen = choose_lambda(results)
    rows = []
    for (arm, ratio), cf_weight in sorted(chosen.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cell = results[(results.arm == arm) & (results.label_ratio == ratio)
                       & (results.cf_weight == cf_weight)].set_index("seed")
        row = {"label_ratio": ratio, "arm": arm, "cf_weight": cf_weight, "seeds": len(cell),
               **summarise_cell(results, cell, ratio, gain=arm != BASELINE)}
        rows.append(row)
    return correct_together(rows)


def sweep(results):
    """Every λ of every arm that has more than one, per label ratio: mean validation mAP (the
    basis of the choice) and, for reading only, the paired test gain over image-only."""
    rows = []
    for (arm, ratio), group in results.groupby(["arm", "label_ratio"]):
        if group.cf_weight.nunique() < 2:
            continue
        chosen = choose_lambda(results)[(arm, ratio)]
        for cf_weight, cell in group.groupby("cf_weight"):
            summary = summarise_cell(results, cell.set_index("seed"), ratio)
            rows.append({"label_ratio": ratio, "arm": arm, "cf_weight": cf_weight,
                         "seeds": len(cell), "val_map": float(cell.val_map.mean()),
                         "chosen": cf_weight == chosen, **summary})
    return rows


def gain_cells(r, corrected):
    """The paired-gain columns of a row: mean gain, its 95% CI, p (and Holm's p, significant)."""
    if "gain" not in r:
        return ["—"] * (5 if corrected else 3)
    interval = f"[{r['gain'] - r['gain_ci']:+.1f}%, {r['gain'] + r['gain_ci']:+.1f}%]"
    cells = [f"{r['gain']:+.1f}%", interval, _p_text(r["p_value"])]
    if corrected:
        cells += [_p_text(r["p_holm"]), "yes" if r["significant"] else "no"]
    return cells


def _p_text(p_value):
    return "—" if np.isnan(p_value) else f"{p_value:.2g}" if p_value < 0.001 else \
        f"{p_value:.3f}"


def _table(header, rows, cells, corrected):
    """A Markdown table: `header` columns, then one row per entry of `rows`: `cells(r)`, then
    the paired gain over image-only, its 95% CI and p-value (and, `corrected`, the
    Holm-corrected p-value and whether it is significant)."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([*cells(r), *gain_cells(r, corrected)]) + " |")
    return "\n".join(lines)


GAIN_COLUMNS = ["gain vs image-only (paired mean)", "95% CI", "paired t-test p"]
CORRECTED_COLUMNS = ["p (Holm, {m} tests)", f"significant (Holm p < {ALPHA:g})"]


def _format_sweep(rows):
    return _table(
        ["label ratio", "arm", "λ", "seeds", "validation mAP (chooses λ)", "test macro mAP",
         *GAIN_COLUMNS[:2], "p (uncorrected, for reading)"], rows,
        lambda r: [f"{r['label_ratio']:g}", r["arm"],
                   f"{r['cf_weight']:g}" + (" (chosen)" if r["chosen"] else ""),
                   f"{r['seeds']}", f"{r['val_map']:.4f}", f"{r['map']:.4f} ± {r['map_ci']:.4f}"],
        corrected=False)


def corrected_tests(rows):
    """How many comparisons the Holm correction of `rows` (summarise's) covered."""
    return sum(1 for r in rows if "p_holm" in r and not np.isnan(r["p_value"]))


def _format(rows):
    return _table(
        ["label ratio", "arm", "λ (on val)", "seeds", "test macro mAP", "precision@1",
         *GAIN_COLUMNS, *[c.format(m=corrected_tests(rows)) for c in CORRECTED_COLUMNS]],
        rows,
        lambda r: [f"{r['label_ratio']:g}", r["arm"], f"{r['cf_weight']:g}", f"{r['seeds']}",
                   f"{r['map']:.4f} ± {r['map_ci']:.4f}", f"{r['p1']:.4f} ± {r['p1_ci']:.4f}"],
        corrected=True)


def summarise_views(results):
    """Per (label_ratio, arm) at the λ chosen on validation: cold and warm test mAP (mean ±
    95% CI) and the paired warm gain over image-only, its p-value Holm-corrected over the
    rows of this table. [] when no cell reports a warm view."""
    if "test_warm_map" not in results or results.test_warm_map.isna().all():
        return []
    rows = []
    for (arm, ratio), cf_weight in sorted(choose_lambda(results).items(),
                                          key=lambda kv: (kv[0][1], kv[0][0])):
        cell = results[(results.arm == arm) & (results.label_ratio == ratio)
                       & (results.cf_weight == cf_weight)].set_index("seed")
        row = {"label_ratio": ratio, "arm": arm, "cf_weight": cf_weight, "seeds": len(cell)}
        row["cold"], row["cold_ci"] = mean_ci(cell.test_cold_map)
        row["warm"], row["warm_ci"] = mean_ci(cell.test_warm_map)
        if arm != BASELINE:
            as_warm = results.assign(test_map=results.test_warm_map)
            warm_cell = cell.assign(test_map=cell.test_warm_map)
            gain = summarise_cell(as_warm, warm_cell, ratio)
            row.update({k: gain[k] for k in ("gain", "gain_ci", "p_value") if k in gain})
        rows.append(row)
    return correct_together(rows)


def _format_views(rows):
    return _table(
        ["label ratio", "arm", "λ (on val)", "seeds", "cold test mAP (no vector)",
         "warm test mAP (vector given)", "warm gain vs image-only (paired mean)", "95% CI",
         "paired t-test p",
         *[c.format(m=corrected_tests(rows)) for c in CORRECTED_COLUMNS]], rows,
        lambda r: [f"{r['label_ratio']:g}", r["arm"], f"{r['cf_weight']:g}", f"{r['seeds']}",
                   f"{r['cold']:.4f} ± {r['cold_ci']:.4f}",
                   f"{r['warm']:.4f} ± {r['warm_ci']:.4f}"],
        corrected=True)


def bucket_table(results):
    """Mean warm and cold mAP per (label ratio, arm, interaction bucket) at the chosen λ, as
    Markdown; "" when the cells report no buckets."""
    names = [c.split("@", 1)[1] for c in results.columns if c.startswith("warm_map@")]
    if not names:
        return ""
    lines = ["| label ratio | arm | interactions | items (mean) | seeds | warm mAP (vector "
             "given) | cold mAP (no vector) |", "|" + " --- |" * 7]
    for (arm, ratio), cf_weight in sorted(choose_lambda(results).items(),
                                          key=lambda kv: (kv[0][1], kv[0][0])):
        cell = results[(results.arm == arm) & (results.label_ratio == ratio)
                       & (results.cf_weight == cf_weight)]
        for name in names:
            warm = cell[f"warm_map@{name}"].dropna()
            if warm.empty:
                continue
            lines.append(f"| {ratio:g} | {arm} | {name} | {cell[f'items@{name}'].mean():.0f} | "
                         f"{len(warm)} | {warm.mean():.4f} | "
                         f"{cell[f'cold_map@{name}'].dropna().mean():.4f} |")
    return "\n".join(lines)


def _plots(rows, workdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({r["arm"] for r in rows})
    for kind, ylabel, filename in (("map", "test macro mAP", "map_vs_label_ratio.png"),
                                   ("gain", "gain over image-only (%)",
                                    "gain_vs_label_ratio.png")):
        figure, axis = plt.subplots(figsize=(5.5, 4))
        for arm in arms:
            points = [r for r in rows if r["arm"] == arm and kind in r]
            if not points:
                continue
            axis.errorbar([r["label_ratio"] for r in points], [r[kind] for r in points],
                          yerr=[0 if np.isnan(r[kind + "_ci"]) else r[kind + "_ci"]
                                for r in points], marker="o", capsize=3, label=arm)
        if kind == "gain":
            axis.axhline(0, color="grey", linewidth=0.8)
        axis.set_xscale("log")
        axis.set_xlabel("label ratio")
        axis.set_ylabel(ylabel)
        axis.set_title(f"{ylabel} (mean ± 95% CI over seeds)", fontsize=9)
        axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(os.path.join(workdir, filename), dpi=120)
        plt.close(figure)


def _correction_note(rows):
    tests = corrected_tests(rows)
    return (f"The p-values of all {tests} comparisons with image-only in this table are "
            f"Holm-corrected together; \"significant\" means a corrected p below {ALPHA:g}. λ "
            "is chosen on validation only, so the test p-values are not made optimistic by "
            "the choice.")


def write_report(results, workdir, command=""):
    """Writes results.md and the two plots into `workdir`; returns the Markdown table."""
    rows = summarise(results)
    table = _format(rows)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("# Experiment results\n\n")
        if command:
            f.write(f"Command: `{command}`\n\n")
        f.write("λ is chosen per arm and label ratio on mean validation mAP; test figures are "
                "mean ± 95% t-interval over seeds; the gain is the mean paired difference to "
                "image-only (same seed: same split, label mask and initial weights) relative to "
                "image-only's mean, with its 95% CI and the paired t-test p-value. "
                f"{_correction_note(rows)}\n\n" + table + "\n")
        views = summarise_views(results)
        if views:
            f.write("\n## Cold and warm test items\n\nCold: every test item with its CF "
                    "vector withheld (what every arm does for a new image). Warm: the test "
                    "items that have a vector, given it (an arm without the CF input scores "
                    "them from the image alone). The warm gain is paired with image-only on "
                    "the same items; its p-values are Holm-corrected together, as a family of "
                    "their own.\n\n" + _format_views(views) + "\n")
            buckets = bucket_table(results)
            if buckets:
                f.write("\n### Warm test items by interaction count\n\nMeans over seeds; "
                        "the bucket edges are --warm_buckets.\n\n" + buckets + "\n")
        swept = sweep(results)
        if swept:
            f.write("\n## Every λ\n\nThe λ of each row above is the one with the best mean "
                    "validation mAP. The test columns of the other λ values are for reading "
                    "only: nothing is chosen on them.\n\n" + _format_sweep(swept) + "\n")
    _plots(rows, workdir)
    return table
