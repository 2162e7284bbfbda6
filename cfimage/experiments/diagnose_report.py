"""The report of `python -m cfimage.diagnose`: statistics over splits, the verdict, Markdown
tables and PNG plots (docs/diagnose.md explains every number).

Statistics are over the random splits: mean and 95% Student-t interval of a probe's test mAP;
for a comparison, the paired relative change (probe / image − 1 on the same split and mask),
averaged over splits with its t interval; for R², the paired difference R² − null.
"""

import math
import os

import numpy as np

from cfimage import atomic
from cfimage.experiments import report
from cfimage.experiments.diagnose_runs import ALL, PROBES

# The verdict's thresholds (docs/diagnose.md, "Verdict"). Both must hold with the interval's
# lower end above 0, at the smallest label ratio measured.
HEADROOM_GAIN = 0.05  # image ⊕ CF probe over image probe, relative mAP change
TRANSFER_R2 = 0.10  # held-out R² of image features -> CF vectors, minus the shuffled null
MIN_PLOTTED_ITEMS = 10  # bins with fewer test items per split (on average) are not plotted
PROBE_TITLES = {"image": "image", "cf": "CF vector (ceiling)", "image+cf": "image ⊕ CF"}


def mean_ci(values):
    """(mean, low, high, n) of the finite values: the 95% Student-t interval of the mean, as
    the experiment report computes it (NaN interval for one value)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan, 0
    mean, half = report.mean_ci(values)
    return mean, mean - half, mean + half, len(values)


def paired_relative_change(values, baseline):
    """Per-split relative change values / baseline − 1 (pairs with a NaN or a zero baseline
    are left out), summarised by mean_ci."""
    values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    keep = np.isfinite(values) & np.isfinite(baseline) & (baseline != 0)
    return mean_ci(values[keep] / baseline[keep] - 1.0)


def paired_difference(values, baseline):
    values, baseline = np.asarray(values, np.float64), np.asarray(baseline, np.float64)
    return mean_ci(values - baseline)


def summarise(maps, r2):
    """Tables of the report from the per-split records (diagnose_runs.run_splits)."""
    map_summary = []
    for (ratio, bin_name), group in maps.groupby(["label_ratio", "bin"], sort=False):
        wide = group.pivot(index="split", columns="probe", values="map")
        row = {"label_ratio": ratio, "bin": bin_name,
               "test_items": float(group[group.probe == "image"].test_items.mean())}
        for probe in PROBES:
            row[probe] = mean_ci(wide[probe])
            if probe != "image":
                row[f"{probe} vs image"] = paired_relative_change(wide[probe], wide["image"])
        map_summary.append(row)
    r2_summary = []
    for bin_name, group in r2.groupby("bin", sort=False):
        r2_summary.append({"bin": bin_name, "test_items": float(group.test_items.mean()),
                           "r2": mean_ci(group.r2), "null_r2": mean_ci(group.null_r2),
                           "r2 - null": paired_difference(group.r2, group.null_r2)})
    return map_summary, r2_summary


def verdict(map_summary, r2_summary):
    """(verdict key, paragraph) from the overall rows at the smallest label ratio."""
    lowest = min(row["label_ratio"] for row in map_summary)
    overall = next(row for row in map_summary
                   if row["label_ratio"] == lowest and row["bin"] == ALL)
    gain, gain_low = overall["image+cf vs image"][:2]
    ceiling = overall["cf vs image"][0]
    transfer = next(row for row in r2_summary if row["bin"] == ALL)["r2 - null"]
    headroom = gain >= HEADROOM_GAIN and gain_low > 0
    transfers = transfer[0] >= TRANSFER_R2 and transfer[1] > 0
    facts = (f"At label ratio {lowest:g}, adding the CF vector to the image features changes "
             f"test mAP by {_percent(overall['image+cf vs image'])} (the CF vector alone: "
             f"{ceiling:+.1%}), and the images explain {_number(transfer)} more of the CF "
             "vectors' variance than a shuffled pairing does.")
    if not headroom:
        return "no_headroom", (
            f"{facts} **No headroom:** the interaction log adds no label information the "
            f"images lack (the image ⊕ CF gain is below +{HEADROOM_GAIN:.0%} or its interval "
            "reaches 0). Train the image-only model (--cf_weight=0); the CF arms are not "
            "expected to help this catalogue.")
    if not transfers:
        return "headroom_no_transfer", (
            f"{facts} **Headroom, little transfer:** the log knows about the labels what the "
            "images do not, but the images predict little of the CF vector (R² above the "
            f"null below {TRANSFER_R2:.2f}, or its interval reaches 0), and a CF head can "
            "only pass on to new images what it can predict from them. Expect the multitask, "
            "two-stage and contrastive arms to stay within a few percent of image-only; "
            "measure a short λ sweep at your label ratio before relying on them. Items that "
            "already have interactions can use their CF vector as an input (image ⊕ CF).")
    return "promising", (
        f"{facts} **Promising:** the log carries label information the images lack, and the "
        "images predict a real part of it. Try the multitask arm with λ chosen on validation "
        "(and two-stage) at your label ratio, with paired seeds (cfimage.experiment); expect "
        "the largest gain where labels are scarce.")


def _percent(summary):
    mean, low, high, _ = summary
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(low):  # one split: no interval
        return f"{mean:+.1%}"
    return f"{mean:+.1%} [{low:+.1%}, {high:+.1%}]"


def _number(summary, digits=3):
    mean, low, high, _ = summary
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def write_report(workdir, header, maps, r2, log=print):
    """Writes diagnose.md, the per-split CSVs and the plots into `workdir`; returns the
    verdict key."""
    maps.to_csv(os.path.join(workdir, "diagnose_map.csv"), index=False)
    r2.to_csv(os.path.join(workdir, "diagnose_r2.csv"), index=False)
    map_summary, r2_summary = summarise(maps, r2)
    key, paragraph = verdict(map_summary, r2_summary)
    plots = _plot(workdir, map_summary, r2_summary)
    lines = [*header, "", "## Verdict", "", paragraph, "",
             f"Thresholds: *promising* needs both (a) the image ⊕ CF probe above the image "
             f"probe by at least {HEADROOM_GAIN:.0%} (paired relative mAP change, 95% interval "
             f"above 0) and (b) held-out R² of image features → CF vectors above the shuffled "
             f"null by at least {TRANSFER_R2:.2f} (interval above 0), both at the smallest "
             "label ratio; (a) alone is *headroom, little transfer*; without (a), *no "
             "headroom*. See docs/diagnose.md for why.", ""]
    lines += _map_tables(map_summary) + _r2_table(r2_summary)
    lines += ["## Plots", "", f"(Bins with fewer than {MIN_PLOTTED_ITEMS} test items per split "
              "are in the tables only.)", ""] + [f"![{name}]({name})" for name in plots] + [""]
    atomic.write_text(os.path.join(workdir, "diagnose.md"), "\n".join(lines))
    log(f"report: {os.path.join(workdir, 'diagnose.md')} ({', '.join(plots)})")
    return key


def _map_tables(map_summary):
    lines = ["## Label probes: test macro mAP", "",
             "Mean [95% interval] over the splits; the changes are paired (same split, same "
             "label mask), relative to the image probe.", ""]
    for ratio in dict.fromkeys(row["label_ratio"] for row in map_summary):
        lines += [f"### Label ratio {ratio:g} (share of training items that keep their labels)",
                  "",
                  "| interactions per item | test items | image | CF vector (ceiling) | "
                  "image ⊕ CF | CF vs image | image ⊕ CF vs image |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in map_summary:
            if row["label_ratio"] == ratio:
                lines.append(
                    f"| {row['bin']} | {row['test_items']:.0f} | {_number(row['image'])} | "
                    f"{_number(row['cf'])} | {_number(row['image+cf'])} | "
                    f"{_percent(row['cf vs image'])} | {_percent(row['image+cf vs image'])} |")
        lines.append("")
    return lines


def _r2_table(r2_summary):
    lines = ["## Image features → CF vectors: held-out R²", "",
             "Ridge regression on the items with a CF vector, alpha chosen on validation; "
             "null = the same fit with the training and validation pairs shuffled.", "",
             "| interactions per item | test items | R² | null R² | R² − null |",
             "| --- | --- | --- | --- | --- |"]
    for row in r2_summary:
        lines.append(f"| {row['bin']} | {row['test_items']:.0f} | {_number(row['r2'])} | "
                     f"{_number(row['null_r2'])} | {_number(row['r2 - null'])} |")
    return lines + [""]


def _plot(workdir, map_summary, r2_summary):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot

    def errorbar(axis, xs, summaries, **kwargs):
        means = np.array([s[0] for s in summaries])
        low = means - np.array([s[1] for s in summaries])
        high = np.array([s[2] for s in summaries]) - means
        axis.errorbar(xs, means, yerr=np.nan_to_num([low, high]), capsize=3, marker="o",
                      **kwargs)

    names = []
    ratios = list(dict.fromkeys(row["label_ratio"] for row in map_summary))
    figure, axis = pyplot.subplots(figsize=(5.5, 4))
    overall = [row for row in map_summary if row["bin"] == ALL]
    for probe in PROBES:
        errorbar(axis, ratios, [row[probe] for row in overall], label=PROBE_TITLES[probe])
    axis.set(xscale="log", xlabel="share of training labels", ylabel="test macro mAP",
             title="Label probes (mean, 95% interval)")
    axis.set_xticks(ratios, [f"{r:g}" for r in ratios])
    axis.legend()
    names.append(_save(figure, workdir, "diagnose_map.png"))

    figure, axes = pyplot.subplots(1, len(ratios), figsize=(4.5 * len(ratios), 4),
                                   squeeze=False, sharey=True)
    for axis, ratio in zip(axes[0], ratios):
        rows = [row for row in map_summary if row["label_ratio"] == ratio
                and row["test_items"] >= MIN_PLOTTED_ITEMS]
        for offset, probe in zip((-0.15, 0.0, 0.15), PROBES):
            errorbar(axis, np.arange(len(rows)) + offset, [row[probe] for row in rows],
                     label=PROBE_TITLES[probe], linestyle="none")
        axis.set_xticks(range(len(rows)), [row["bin"] for row in rows], rotation=30)
        axis.set(title=f"label ratio {ratio:g}", xlabel="interactions per item")
    axes[0][0].set_ylabel("test macro mAP")
    axes[0][0].legend()
    names.append(_save(figure, workdir, "diagnose_bins.png"))

    figure, axis = pyplot.subplots(figsize=(5.5, 4))
    r2_summary = [row for row in r2_summary if row["test_items"] >= MIN_PLOTTED_ITEMS]
    xs = np.arange(len(r2_summary))
    errorbar(axis, xs - 0.1, [row["r2"] for row in r2_summary], label="R²", linestyle="none")
    errorbar(axis, xs + 0.1, [row["null_r2"] for row in r2_summary], label="shuffled null",
             linestyle="none")
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_xticks(xs, [row["bin"] for row in r2_summary], rotation=30)
    axis.set(xlabel="interactions per item", ylabel="held-out R²",
             title="Image features → CF vectors")
    axis.legend()
    names.append(_save(figure, workdir, "diagnose_r2.png"))
    return names


def _save(figure, workdir, name):
    figure.tight_layout()
    tmp = os.path.join(workdir, f".{name}.tmp-{os.getpid()}.png")
    figure.savefig(tmp, dpi=110)
    os.replace(tmp, os.path.join(workdir, name))
    from matplotlib import pyplot
    pyplot.close(figure)
    return name
