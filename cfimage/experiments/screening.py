"""Screening: many experiments' results against one image-only baseline, and the choice of a
configuration per label ratio on validation only (cfimage/screen.py is the command).

Each experiment (one `cfimage.experiment` workdir or its committed copy, read from its
results.csv) is one *option*: a CF model, target or loss that needed a workdir of its own.
Every arm of every option other than image-only is a candidate; its λ is chosen on
validation within the candidate (report.choose_lambda), its paired test gain over image-only
is tested, and all those tests, over every option and label ratio, are Holm-corrected as one
family. The experiments must share the baseline: image-only cells of the same seed and label
ratio must have the same test mAP in every experiment that has them (their split, label mask
and initial weights do not depend on the CF vectors), or the pairing would be false.

An option run at several values of its own knob (an InfoNCE temperature, a number of
components: one experiment per value, named together by `same_option`) has that knob chosen on
validation like λ: per arm and label ratio only the value whose row has the best mean
validation mAP is tested; the others stay in the report, untested.

The configuration to confirm per label ratio is the candidate, image-only included, with the
best mean validation mAP over the seeds that all of them finished; the test figures never
enter that choice.
"""

import os

import pandas as pd

from cfimage.errors import UserError
from cfimage.experiments import report

COLUMNS = ["arm", "label_ratio", "cf_weight", "seed", "val_map", "test_map",
           "test_precision_at_1"]


def read_results(named_dirs):
    """{option: DataFrame} from {option: directory or results.csv path}."""
    tables = {}
    for option, location in named_dirs.items():
        path = (os.path.join(location, "results.csv") if os.path.isdir(location)
                else location)
        if not os.path.isfile(path):
            raise UserError(f"--results: {option}={location}: no results.csv there (a "
                            "cfimage.experiment workdir, or a copy of its results.csv)")
        table = pd.read_csv(path)
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise UserError(f"--results: {path} lacks the columns {missing}: not a "
                            "cfimage.experiment results.csv")
        tables[option] = table[COLUMNS]
    return tables


def shared_baseline(tables):
    """The image-only rows of every experiment, merged: one row per (label_ratio, seed).
    Raises UserError when two experiments disagree on one of them (not paired)."""
    rows = []
    for option, table in tables.items():
        rows.append(table[table.arm == report.BASELINE].assign(option=option))
    merged = pd.concat(rows, ignore_index=True)
    if merged.empty:
        raise UserError(f"--results: no {report.BASELINE} cells in any experiment: nothing "
                        "to compare the arms with")
    for (ratio, seed), group in merged.groupby(["label_ratio", "seed"]):
        if group.test_map.nunique() > 1 or group.val_map.nunique() > 1:
            raise UserError(
                f"--results: the {report.BASELINE} cells of label ratio {ratio:g}, seed "
                f"{seed} differ between {', '.join(group.option)} (test mAP "
                f"{', '.join(f'{v:.6f}' for v in group.test_map)}): the experiments do not "
                "share their splits, label masks or initial weights, so their arms cannot "
                "be paired with one baseline")
    return merged.drop_duplicates(["label_ratio", "seed"]).drop(columns="option")


def candidates(tables, baseline, same_option=None):
    """One row per (label_ratio, option, arm) at the λ chosen on validation within it, with
    mean validation mAP, test mAP and the paired gain over the shared baseline; the tested
    rows (see choose_knobs) get `p_holm` over all of them and `significant`."""
    rows = []
    for option, table in tables.items():
        arms = table[table.arm != report.BASELINE]
        if arms.empty:
            continue
        results = pd.concat([arms, baseline], ignore_index=True)
        for (arm, ratio), cf_weight in report.choose_lambda(arms).items():
            cell = arms[(arms.arm == arm) & (arms.label_ratio == ratio)
                        & (arms.cf_weight == cf_weight)].set_index("seed")
            rows.append({"label_ratio": ratio, "option": option, "arm": arm,
                         "cf_weight": cf_weight, "seeds": len(cell),
                         "val_map": float(cell.val_map.mean()),
                         **report.summarise_cell(results, cell, ratio)})
    choose_knobs(tables, rows, same_option or {})
    report.correct_together(rows)
    return sorted(rows, key=lambda r: (r["label_ratio"], r["option"], r["arm"]))


def choose_knobs(tables, rows, same_option):
    """`same_option` maps an experiment's name to the experiment it repeats at another value
    of the option's own knob. Per (option, arm, label ratio), the row with the best mean
    validation mAP over the seeds all of them finished keeps its test; the others lose their
    gain and p-value and name the chosen experiment in `knob_lost_to`."""
    for name, option in same_option.items():
        for experiment in (name, option):
            if experiment not in tables:
                raise UserError(f"--same_option: {name}={option}: no experiment named "
                                f"{experiment!r} in --results")
    groups = {}
    for r in rows:
        key = (same_option.get(r["option"], r["option"]), r["arm"], r["label_ratio"])
        groups.setdefault(key, []).append(r)
    for group in groups.values():
        if len(group) < 2:
            continue
        cells = [_val_map(tables[r["option"]], r) for r in group]
        common = sorted(set.intersection(*(set(cell.index) for cell in cells)))
        scores = [float(cell[common].mean()) if common else float("-inf") for cell in cells]
        best = group[scores.index(max(scores))]
        for r in group:
            if r is not best:
                for key in ("gain", "gain_ci", "p_value"):
                    r.pop(key, None)
                r["knob_lost_to"] = best["option"]


def _val_map(table, row):
    """Validation mAP per seed of the cell of `row` (its arm, label ratio and λ)."""
    return table[(table.arm == row["arm"]) & (table.label_ratio == row["label_ratio"])
                 & (table.cf_weight == row["cf_weight"])].set_index("seed").val_map


def choose(tables, baseline, rows):
    """Per label ratio: every candidate's (and image-only's) mean validation mAP over the
    seeds they all finished, and the best of them. Returns {ratio: (choice, scores, number
    of seeds)}, where scores maps (option, arm, λ) to that mean, image-only as
    ("—", image_only, 0)."""
    chosen = {}
    for ratio in sorted(baseline.label_ratio.unique()):
        base = baseline[baseline.label_ratio == ratio].set_index("seed").val_map
        cells = {("—", report.BASELINE, 0.0): base}
        for r in rows:
            if r["label_ratio"] == ratio and "knob_lost_to" not in r:
                cells[(r["option"], r["arm"], r["cf_weight"])] = _val_map(tables[r["option"]], r)
        common = set.intersection(*(set(values.index) for values in cells.values()))
        if not common:
            continue
        seeds = sorted(common)
        scores = {key: float(values[seeds].mean()) for key, values in cells.items()}
        best = max(scores, key=scores.get)
        chosen[ratio] = (best, scores, len(seeds))
    return chosen


def write(out_dir, named_dirs, command, log=print, same_option=None):
    """Reads the experiments, writes screening.md, screening.csv (one row per arm) and
    chosen.csv (one row per label ratio: the configuration chosen on validation) into
    `out_dir`; returns the rows. `same_option`: see choose_knobs."""
    tables = read_results(named_dirs)
    baseline = shared_baseline(tables)
    rows = candidates(tables, baseline, same_option)
    if not rows:
        raise UserError("--results: no arm other than image-only in any experiment")
    chosen = choose(tables, baseline, rows)
    os.makedirs(out_dir, exist_ok=True)
    pd.DataFrame(rows).to_csv(os.path.join(out_dir, "screening.csv"), index=False)
    tests = report.corrected_tests(rows)
    lines = [
        "# Screening", "", f"Command: `{command}`", "",
        "Experiments: " + ", ".join(f"`{o}` ({d})" for o, d in named_dirs.items()) + ". "
        "Each row is one arm of one experiment at the λ chosen on its mean validation mAP; "
        "the gain is paired with the image-only cells shared by all experiments (checked "
        f"equal); the p-values of all {tests} comparisons are Holm-corrected together."
        + (" An experiment that repeats another at a second value of the option's own knob "
           "is tested only where its validation mAP is the better of the two; elsewhere its "
           "row says which value validation chose, and it has no test." if same_option
           else ""), "",
        "| label ratio | experiment | arm | λ (on val) | seeds | validation mAP | "
        "test macro mAP | gain vs image-only | 95% CI | p | p (Holm) | significant |",
        "|" + " --- |" * 12]
    for r in rows:
        gain = report.gain_cells(r, corrected=True)
        lines.append("| " + " | ".join([
            f"{r['label_ratio']:g}",
            r["option"] + (f" (validation chose {r['knob_lost_to']})" if "knob_lost_to" in r
                           else ""), r["arm"], f"{r['cf_weight']:g}",
            f"{r['seeds']}", f"{r['val_map']:.4f}", f"{r['map']:.4f} ± {r['map_ci']:.4f}",
            *gain]) + " |")
    lines += ["", "## Chosen on validation", "",
              "Per label ratio, the configuration with the best mean validation mAP over the "
              "seeds that every candidate finished (image-only included); the test figures "
              "play no part in the choice.", "",
              "| label ratio | seeds | chosen | its validation mAP | image-only's | "
              "runner-up | chosen: test gain vs image-only (read once) |", "|" + " --- |" * 7]
    for ratio, (best, scores, seeds) in chosen.items():
        ranked = sorted(scores, key=scores.get, reverse=True)
        runner = ranked[1] if len(ranked) > 1 else None
        base_key = ("—", report.BASELINE, 0.0)
        lines.append(f"| {ratio:g} | {seeds} | {_name(best)} | {scores[best]:.4f} | "
                     f"{scores[base_key]:.4f} | "
                     + (f"{_name(runner)} ({scores[runner]:.4f})" if runner else "—") + " | "
                     + _test_text(rows, ratio, best) + " |")
        log(f"label ratio {ratio:g}: chosen on validation {_name(best)} "
            f"({scores[best]:.4f}; image-only {scores[base_key]:.4f}, {seeds} seeds)")
    pd.DataFrame([{"label_ratio": ratio, "option": best[0], "arm": best[1],
                   "cf_weight": best[2], "seeds": seeds, "val_map": scores[best],
                   "image_only_val_map": scores[("—", report.BASELINE, 0.0)]}
                  for ratio, (best, scores, seeds) in chosen.items()]
                 ).to_csv(os.path.join(out_dir, "chosen.csv"), index=False)
    with open(os.path.join(out_dir, "screening.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


def _test_text(rows, ratio, key):
    """The chosen candidate's paired test gain, CI and Holm p (— for image-only)."""
    for r in rows:
        if (r["label_ratio"], r["option"], r["arm"], r["cf_weight"]) == (ratio, *key) \
                and "gain" in r:
            gain, interval, _, p_holm, _ = report.gain_cells(r, corrected=True)
            return f"{gain} {interval}, Holm p {p_holm}"
    return "—"


def _name(key):
    option, arm, cf_weight = key
    return arm if arm == report.BASELINE else f"{option}: {arm} λ={cf_weight:g}"
