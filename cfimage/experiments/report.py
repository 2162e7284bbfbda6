"""Experiment report: λ chosen on validation, mean ± 95% CI over seeds, paired tests, plots."""

import os

import numpy as np
from scipy import stats

BASELINE = "image_only"


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


def summarise(results):
    """One row per (label_ratio, arm) at the λ chosen on validation."""
    chosen = choose_lambda(results)
    rows = []
    for (arm, ratio), cf_weight in sorted(chosen.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cell = results[(results.arm == arm) & (results.label_ratio == ratio)
                       & (results.cf_weight == cf_weight)].set_index("seed")
        row = {"label_ratio": ratio, "arm": arm, "cf_weight": cf_weight, "seeds": len(cell),
               **summarise_cell(results, cell, ratio, gain=arm != BASELINE)}
        rows.append(row)
    return rows


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


def _table(header, rows, cells):
    """A Markdown table: `header` columns, then one row per entry of `rows` whose first
    columns are `cells(r)` and whose last two are the paired gain and its p-value."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in rows:
        gain = f"{r['gain']:+.1f}% ± {r['gain_ci']:.1f}%" if "gain" in r else "—"
        p_value = f"{r['p_value']:.3f}" if "p_value" in r else "—"
        lines.append("| " + " | ".join([*cells(r), gain, p_value]) + " |")
    return "\n".join(lines)


GAIN_COLUMNS = ["gain vs image-only (paired)", "paired t-test p"]


def _format_sweep(rows):
    return _table(
        ["label ratio", "arm", "λ", "seeds", "validation mAP (chooses λ)", "test macro mAP",
         *GAIN_COLUMNS], rows,
        lambda r: [f"{r['label_ratio']:g}", r["arm"],
                   f"{r['cf_weight']:g}" + (" (chosen)" if r["chosen"] else ""),
                   f"{r['seeds']}", f"{r['val_map']:.4f}", f"{r['map']:.4f} ± {r['map_ci']:.4f}"])


def _format(rows):
    return _table(
        ["label ratio", "arm", "λ (on val)", "seeds", "test macro mAP", "precision@1",
         *GAIN_COLUMNS], rows,
        lambda r: [f"{r['label_ratio']:g}", r["arm"], f"{r['cf_weight']:g}", f"{r['seeds']}",
                   f"{r['map']:.4f} ± {r['map_ci']:.4f}", f"{r['p1']:.4f} ± {r['p1_ci']:.4f}"])


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
                "image-only's mean, with its 95% CI.\n\n" + table + "\n")
        swept = sweep(results)
        if swept:
            f.write("\n## Every λ\n\nThe λ of each row above is the one with the best mean "
                    "validation mAP. The test columns of the other λ values are for reading "
                    "only: nothing is chosen on them.\n\n" + _format_sweep(swept) + "\n")
    _plots(rows, workdir)
    return table
