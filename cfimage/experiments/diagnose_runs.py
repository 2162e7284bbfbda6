"""The measurements of `python -m cfimage.diagnose`, one random item split at a time.

For each split (data.split_items with the split's seed) and label ratio (data.mask_labels with
the same seed), the label probes are trained on the same labelled training items, chosen on
the same validation items and scored on the same test items, so their differences are paired:
  image     cached backbone features (what a deployed image model sees)
  cf        the item's CF vector and a has-vector flag (the ceiling: a new image has none)
  image+cf  the two probes' scores mixed, the weight chosen on validation (probes.fuse)
Once per split (labels play no part), ridge regression from image features to CF vectors
gives the held-out R² and its shuffled-pairing null, on the items that have a vector.
Every figure is also computed per bin of interactions per item (test items of the bin).
"""

import dataclasses
import time

import numpy as np
import pandas as pd

from cfimage.experiments import probes
from cfimage.stage2 import data
from cfimage.stage2.metrics import evaluate_scores

PROBES = ("image", "cf", "image+cf")
ALL = "all items"


@dataclasses.dataclass
class DiagnoseInputs:
    image_features: np.ndarray  # (n, d) cached backbone features
    vectors: np.ndarray  # (n, k) CF vectors (zeros where has_vector is False)
    has_vector: np.ndarray  # (n,) bool
    labels: np.ndarray  # (n, C) multi-hot
    labelled: np.ndarray  # (n,) bool
    label_names: list
    multi_label: bool
    bins: np.ndarray  # (n,) int: the interaction bin of each item
    bin_names: list  # name of each bin, in order


def interaction_bins(counts, num_bins):
    """Quantile bins of interactions per item: (bin of each item, bin names like "4–12").
    Items without interactions get a bin of their own ("0"); the others are split at the
    quantiles of their counts (fewer bins when counts tie)."""
    counts = np.asarray(counts, np.int64)
    positive = counts[counts > 0]
    bins = np.zeros(len(counts), np.int64)
    names = []
    if len(positive) < len(counts):
        names.append("0")
    offset = len(names)
    if len(positive):
        uppers = np.unique(np.quantile(positive, np.linspace(0, 1, num_bins + 1)[1:],
                                       method="lower"))
        uppers[-1] = positive.max()
        which = np.searchsorted(uppers, counts, side="left")
        used = sorted(set(which[counts > 0]))
        for number, upper_index in enumerate(used):
            members = counts[(counts > 0) & (which == upper_index)]
            low, high = int(members.min()), int(members.max())
            names.append(str(low) if low == high else f"{low}–{high}")
            bins[(counts > 0) & (which == upper_index)] = offset + number
    return bins, names


def run_splits(inputs, num_splits, label_ratios, fractions, first_seed, settings, log=print):
    """All splits: (mAP records, R² records) as DataFrames with one row per split and bin."""
    map_rows, r2_rows = [], []
    started = time.time()
    for number in range(num_splits):
        seed = first_seed + number
        split_maps, split_r2 = evaluate_split(inputs, seed, label_ratios, fractions, settings)
        map_rows += split_maps
        r2_rows += split_r2
        overall = {(row["label_ratio"], row["probe"]): row["map"] for row in split_maps
                   if row["bin"] == ALL}
        lowest = min(label_ratios)
        elapsed = time.time() - started
        log(f"split {number + 1}/{num_splits} (seed {seed}): mAP at {lowest:g} labels "
            + ", ".join(f"{probe} {overall[lowest, probe]:.3f}" for probe in PROBES)
            + f"; R² {split_r2[0]['r2']:.3f} (null {split_r2[0]['null_r2']:.3f}); "
            f"{elapsed / (number + 1):.1f} s/split")
    return pd.DataFrame(map_rows), pd.DataFrame(r2_rows)


def evaluate_split(inputs, seed, label_ratios, fractions, settings):
    """One split: mAP of every probe at every label ratio and R², overall and per bin."""
    splits = data.split_items(len(inputs.labels), inputs.labelled, fractions, seed)
    train, val, test = splits["train"], splits["validation"], splits["test"]
    blocks = {"image": inputs.image_features,
              "cf": probes.cf_features(inputs.vectors, inputs.has_vector)}
    map_rows = []
    for ratio in label_ratios:
        labelled = data.mask_labels(inputs.labelled, train, ratio, seed)
        rows = train[labelled[train]]
        if len(rows) == 0:  # a tiny catalogue at a small ratio: nothing to train on
            map_rows += [{"split": seed, "label_ratio": ratio, "probe": probe, "bin": name,
                          "map": np.nan, "test_items": int(members.sum()), "train_labelled": 0}
                         for probe in PROBES for name, members in _bin_members(inputs, test)]
            continue
        fitted = {probe: probes.label_probe(x[rows], inputs.labels[rows], x[val],
                                            inputs.labels[val], x[test], inputs.multi_label,
                                            settings, seed=seed)
                  for probe, x in blocks.items()}
        scores = {probe: fitted[probe].test_scores for probe in blocks}
        scores["image+cf"], _ = probes.fuse(fitted["image"], fitted["cf"], inputs.labels[val])
        for probe in PROBES:
            for name, members in _bin_members(inputs, test):
                value = (evaluate_scores(inputs.labels[test][members], scores[probe][members],
                                         inputs.label_names)["macro_map"]
                         if members.any() else np.nan)  # NaN: no test item in this bin
                map_rows.append({"split": seed, "label_ratio": ratio, "probe": probe,
                                 "bin": name, "map": value,
                                 "test_items": int(members.sum()),
                                 "train_labelled": int(len(rows))})
    return map_rows, _r2_rows(inputs, train, val, test, seed, settings)


def _bin_members(inputs, rows):
    """(bin name, boolean mask over `rows`) for all items, then each bin."""
    yield ALL, np.ones(len(rows), bool)
    for index, name in enumerate(inputs.bin_names):
        yield name, inputs.bins[rows] == index


def _r2_rows(inputs, train, val, test, seed, settings):
    train, val, test = (rows[inputs.has_vector[rows]] for rows in (train, val, test))
    if min(len(train), len(val), len(test)) < 2:
        return [{"split": seed, "bin": ALL, "r2": np.nan, "null_r2": np.nan, "test_items": 0}]
    x, y = inputs.image_features, inputs.vectors
    fit = probes.ridge_r2(x[train], y[train], x[val], y[val], x[test], y[test],
                          alphas=settings.ridge_alphas, seed=seed)
    rows = []
    for name, members in _bin_members(inputs, test):
        target = fit["test_target"][members]
        rows.append({"split": seed, "bin": name,
                     "r2": probes.r2_score(target, fit["test_prediction"][members]),
                     "null_r2": probes.r2_score(target, fit["null_prediction"][members]),
                     "test_items": int(members.sum())})
    return rows
