"""The catalogue format: where a site's data is read and validated.

A catalogue is a directory with two CSV files:

  items.csv         one row per item: item id, image path (relative to the
                    directory), labels separated by "|" (empty = unlabelled).
  interactions.csv  one row per interaction: user id, item id, and optionally
                    a positive weight (rating, count) and a timestamp.

Column and file names can be changed (see `CatalogueSpec`). Everything is
validated on load; a user mistake raises `CatalogueError` with the file, the
line and the value, and says what would be valid.
"""

import dataclasses
import os

import numpy as np
import pandas as pd

UNKNOWN_ITEM_POLICIES = ("fail", "keep", "drop")


class CatalogueError(ValueError):
    """A problem with the user's catalogue files."""


@dataclasses.dataclass
class CatalogueSpec:
    """How to read a catalogue directory. Defaults match the documented format."""

    items_file: str = "items.csv"
    interactions_file: str = "interactions.csv"
    item_id_column: str = "item_id"
    image_column: str = "image"
    labels_column: str = "labels"
    label_separator: str = "|"
    user_id_column: str = "user_id"
    interaction_item_column: str = "item_id"
    # Optional columns: used when present, ignored when absent ("" = do not use).
    weight_column: str = "weight"
    timestamp_column: str = "timestamp"
    # Labels carried by fewer items than this are removed from the vocabulary.
    min_label_count: int = 1
    # Label values that mean "no label", e.g. MovieLens' "(no genres listed)".
    ignore_labels: tuple = ()
    # Interactions whose item is not in items.csv: fail (default), keep them
    # for stage 1 only (they still train the user and item towers), or drop.
    unknown_interaction_items: str = "fail"


@dataclasses.dataclass
class Catalogue:
    root: str
    item_ids: np.ndarray  # (n,) str
    image_paths: np.ndarray  # (n,) absolute paths
    label_names: list  # (C,) sorted
    labels: np.ndarray  # (n, C) float32 multi-hot
    labelled: np.ndarray  # (n,) bool: the item has at least one label
    interactions: pd.DataFrame  # user_id, item_id (str), weight (float), [timestamp]
    multi_label: bool
    notes: list = dataclasses.field(default_factory=list)  # what loading changed, for the log

    @property
    def num_items(self):
        return len(self.item_ids)

    @property
    def num_classes(self):
        return len(self.label_names)


def _line(index):
    """File line of a pandas row index (line 1 is the header)."""
    return index + 2


def _read_csv(path, what):
    if not os.path.isfile(path):
        raise CatalogueError(f"{what} file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise CatalogueError(
            f"{path}: not valid UTF-8 ({error}). Save the file as UTF-8.") from error
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise CatalogueError(f"{path}: not a readable CSV file: {error}") from error
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _require_columns(frame, path, columns):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CatalogueError(
            f"{path}: missing column(s) {missing}; the file has {list(frame.columns)}. "
            "Rename the columns or set the matching --*_column flag.")


def _check_ids(values, path, column):
    values = values.str.strip()
    empty = np.flatnonzero(values.to_numpy() == "")
    if len(empty):
        raise CatalogueError(f"{path}, line {_line(empty[0])}: empty {column!r}.")
    return values


def _parse_labels(raw, spec, path):
    ignored = set(spec.ignore_labels)
    parsed = []
    for text in raw:
        names = {name.strip() for name in text.split(spec.label_separator)}
        parsed.append(sorted(name for name in names if name and name not in ignored))
    counts = pd.Series([name for names in parsed for name in names]).value_counts()
    if counts.empty:
        raise CatalogueError(
            f"{path}: no item has a label in column {spec.labels_column!r}. At least some "
            f"items need labels, separated by {spec.label_separator!r}.")
    kept = sorted(counts[counts >= spec.min_label_count].index)
    dropped = sorted(set(counts.index) - set(kept))
    if not kept:
        raise CatalogueError(
            f"{path}: every label has fewer than min_label_count={spec.min_label_count} items.")
    return parsed, kept, dropped


def load_items(root, spec):
    """Reads items.csv; returns ids, absolute image paths, label names, multi-hot, notes."""
    path = os.path.join(root, spec.items_file)
    frame = _read_csv(path, "items")
    _require_columns(frame, path, [spec.item_id_column, spec.image_column, spec.labels_column])
    if frame.empty:
        raise CatalogueError(f"{path}: no rows.")

    ids = _check_ids(frame[spec.item_id_column], path, spec.item_id_column)
    duplicated = np.flatnonzero(ids.duplicated().to_numpy())
    if len(duplicated):
        first = duplicated[0]
        raise CatalogueError(
            f"{path}, line {_line(first)}: duplicate item id {ids.iloc[first]!r} "
            f"({len(duplicated)} duplicate row(s) in all). Item ids must be unique.")

    images = frame[spec.image_column].str.strip()
    paths = np.array([os.path.abspath(os.path.join(root, p)) for p in images])
    missing = [i for i, p in enumerate(paths) if not images.iloc[i] or not os.path.isfile(p)]
    if missing:
        first = missing[0]
        raise CatalogueError(
            f"{path}, line {_line(first)}: image file {images.iloc[first]!r} not found "
            f"(looked for {paths[first]}); {len(missing)} item(s) in all have no image. "
            "Image paths are relative to the catalogue directory.")

    parsed, label_names, dropped = _parse_labels(frame[spec.labels_column], spec, path)
    notes = []
    if dropped:
        notes.append(f"labels with fewer than {spec.min_label_count} items removed: {dropped}")
    column = {name: c for c, name in enumerate(label_names)}
    multi_hot = np.zeros((len(frame), len(label_names)), np.float32)
    for row, names in enumerate(parsed):
        for name in names:
            if name in column:
                multi_hot[row, column[name]] = 1.0
    return ids.to_numpy().astype(str), paths, label_names, multi_hot, notes


def load_interactions(root, spec, item_ids):
    """Reads interactions.csv into user_id, item_id, weight[, timestamp]; returns frame, notes."""
    path = os.path.join(root, spec.interactions_file)
    frame = _read_csv(path, "interactions")
    _require_columns(frame, path, [spec.user_id_column, spec.interaction_item_column])
    if frame.empty:
        raise CatalogueError(f"{path}: no rows; stage 1 needs interactions "
                             "(or pass --cf_embeddings with vectors you already have).")
    out = pd.DataFrame({
        "user_id": _check_ids(frame[spec.user_id_column], path, spec.user_id_column),
        "item_id": _check_ids(frame[spec.interaction_item_column], path,
                              spec.interaction_item_column),
    })
    if spec.weight_column and spec.weight_column in frame.columns:
        weight = pd.to_numeric(frame[spec.weight_column].str.strip(), errors="coerce")
        bad = np.flatnonzero(~np.isfinite(weight.to_numpy()) | (weight.to_numpy() <= 0))
        if len(bad):
            first = bad[0]
            raise CatalogueError(
                f"{path}, line {_line(first)}: {spec.weight_column!r} is "
                f"{frame[spec.weight_column].iloc[first]!r}; weights must be finite numbers > 0 "
                f"({len(bad)} bad row(s) in all).")
        out["weight"] = weight.astype(np.float32)
    else:
        out["weight"] = np.float32(1.0)
    if spec.timestamp_column and spec.timestamp_column in frame.columns:
        out["timestamp"] = pd.to_numeric(frame[spec.timestamp_column], errors="coerce")

    notes = []
    known = out["item_id"].isin(set(item_ids)).to_numpy()
    if not known.all():
        unknown = np.flatnonzero(~known)
        first = unknown[0]
        policy = spec.unknown_interaction_items
        if policy == "fail":
            raise CatalogueError(
                f"{path}, line {_line(first)}: item id {out['item_id'].iloc[first]!r} is not in "
                f"{spec.items_file} ({len(unknown)} such row(s)). Fix the ids, or pass "
                "--unknown_interaction_items=keep (use them to train the two-tower model) "
                "or =drop.")
        if policy == "drop":
            out = out[known].reset_index(drop=True)
            notes.append(f"dropped {len(unknown)} interaction(s) on items not in the catalogue")
        else:
            notes.append(f"kept {len(unknown)} interaction(s) on items not in the catalogue "
                         "(they train the two-tower model only)")
    if not out["item_id"].isin(set(item_ids)).any():
        raise CatalogueError(f"{path}: no interaction refers to an item of {spec.items_file}.")
    return out, notes


def load_catalogue(root, spec=None):
    """Loads and validates a catalogue directory."""
    spec = spec or CatalogueSpec()
    if spec.unknown_interaction_items not in UNKNOWN_ITEM_POLICIES:
        raise CatalogueError(f"unknown_interaction_items must be one of {UNKNOWN_ITEM_POLICIES}, "
                             f"not {spec.unknown_interaction_items!r}")
    if not os.path.isdir(root):
        raise CatalogueError(f"catalogue directory not found: {root}")
    item_ids, paths, label_names, labels, notes = load_items(root, spec)
    interactions, more_notes = load_interactions(root, spec, item_ids)
    labelled = labels.sum(axis=1) > 0
    return Catalogue(
        root=os.path.abspath(root), item_ids=item_ids, image_paths=paths,
        label_names=label_names, labels=labels, labelled=labelled, interactions=interactions,
        multi_label=bool((labels.sum(axis=1) > 1).any()), notes=notes + more_notes)


def drop_items(catalogue, drop):
    """A copy of `catalogue` without the items where the bool mask `drop` is True.

    Their interactions stay: they still train the two-tower model.
    """
    keep = ~np.asarray(drop, bool)
    labels = catalogue.labels[keep]
    return dataclasses.replace(
        catalogue, item_ids=catalogue.item_ids[keep], image_paths=catalogue.image_paths[keep],
        labels=labels, labelled=catalogue.labelled[keep],
        multi_label=bool((labels.sum(axis=1) > 1).any()), notes=list(catalogue.notes))


def describe(catalogue):
    """One-paragraph summary for the log."""
    n_int = catalogue.interactions.item_id.isin(set(catalogue.item_ids)).sum()
    kind = "multi-label" if catalogue.multi_label else "single-label"
    return (f"catalogue {catalogue.root}: {catalogue.num_items} items "
            f"({int(catalogue.labelled.sum())} labelled), {catalogue.num_classes} classes "
            f"({kind}), {len(catalogue.interactions)} interactions ({n_int} on catalogue items) "
            f"by {catalogue.interactions.user_id.nunique()} users")
