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

import csv
import dataclasses
import errno
import os
import re
import stat

import numpy as np
import pandas as pd

from cfimage.errors import UserError

UNKNOWN_ITEM_POLICIES = ("fail", "keep", "drop")


class CatalogueError(UserError):
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
    # Image paths that resolve (after symlinks) outside the catalogue directory are refused
    # unless this is set (--allow_outside_paths): a catalogue must not read arbitrary files.
    allow_outside_paths: bool = False


@dataclasses.dataclass
class Catalogue:
    root: str
    item_ids: np.ndarray  # (n,) str
    image_paths: np.ndarray  # (n,) absolute paths
    label_names: list  # (C,) sorted
    labels: np.ndarray  # (n, C) float32 multi-hot
    labelled: np.ndarray  # (n,) bool: the item has at least one label
    # user_id, item_id (str), weight (float), [timestamp]; None when loaded with
    # interactions=False (stage 1 streams them from the files: cfimage/stage1/stream.py).
    interactions: pd.DataFrame | None
    multi_label: bool
    notes: list = dataclasses.field(default_factory=list)  # what loading changed, for the log

    @property
    def num_items(self):
        return len(self.item_ids)

    @property
    def num_classes(self):
        return len(self.label_names)

    def is_multi_label(self, task):
        """Whether a run with --task=`task` (auto, multi_label or single_label) treats this
        catalogue as multi-label: auto follows the labels (some item has two or more)."""
        return self.multi_label if task == "auto" else task == "multi_label"


def read_csv_chunks(path, what, chunk_rows=None, stream=None, one_row_per_line=False):
    """Reads a CSV file as strings, `chunk_rows` rows at a time (all at once when None);
    yields (frame, file line of each row). The one CSV reader of the catalogue files.

    Python's csv module rather than pandas: every row must have as many fields as the
    header (pandas pads short rows and shifts long ones into an index), quoting is
    strict, and each row keeps the file line it starts on (blank lines and quoted line
    breaks would shift a row count), so every message can name the real line. Lines are
    decoded one at a time, so a file of any size is read in bounded memory and a byte that
    is not UTF-8 is reported with its line. `stream`: an open binary file to read instead of
    opening `path` (stage 1 reads gs:// files through tf.io.gfile). `one_row_per_line`: also
    refuse what a reader of one row per line (streamed stage 1's tf.data decode_csv) would read
    differently, with the line: a line break inside a quoted value, a quote character inside a
    value, a carriage return alone as a line break.
    """
    if stream is None:
        problem = image_file_problem(path)
        if problem == "not found":
            raise CatalogueError(f"{what} file not found: {path}")
        if problem:
            raise CatalogueError(f"{what} file {path} is {problem}, not a CSV file.")
        try:
            f = open(path, "rb")
        except OSError as error:
            raise CatalogueError(f"{path}: cannot read the {what} file ({error.strerror}).") \
                from None
        with f:
            yield from read_csv_chunks(path, what, chunk_rows, f, one_row_per_line)
        return
    reader = csv.reader(text_lines(path, stream, lone_cr=not one_row_per_line), strict=True)
    rows, lines, start = [], [], 1
    try:
        header = next(reader, None)
        if not header or not any(name.strip() for name in header):
            raise CatalogueError(f"{path}: empty file or empty header line; the first line "
                                 "must name the columns.")
        if one_row_per_line:
            _check_one_line(path, 1, reader.line_num, header)
        header = [name.strip() for name in header]
        seen = set()
        for name in header:
            if name in seen or not name:
                raise CatalogueError(
                    f"{path}, line 1: {'duplicate' if name else 'empty'} column name {name!r} "
                    f"in the header {header}; column names must be unique and non-empty.")
            seen.add(name)
        start = reader.line_num + 1
        for record in reader:
            if len(record) > 1 or (record and record[0].strip()):  # blank lines are skipped
                if one_row_per_line:
                    _check_one_line(path, start, reader.line_num, record)
                if len(record) != len(header):
                    raise CatalogueError(
                        f"{path}, line {start}: {len(record)} field(s) {record[:6]}, but the "
                        f"header has {len(header)} {header}. Every row needs one value per "
                        "column; quote values that contain a comma.")
                rows.append(record)
                lines.append(start)
                if chunk_rows and len(rows) == chunk_rows:
                    yield _frame(header, rows), np.asarray(lines, np.int64)
                    rows, lines = [], []
            start = reader.line_num + 1
    except csv.Error as error:
        raise CatalogueError(
            f"{path}, line {start}: malformed CSV ({error}). A value that contains a "
            'comma, a quote or a line break must be quoted, with quotes inside it doubled ("").'
        ) from None
    if rows or not chunk_rows:
        yield _frame(header, rows), np.asarray(lines, np.int64)


def _check_one_line(path, start, end, record):
    """CatalogueError for a row that a one-row-per-line reader would split or parse otherwise."""
    advice = ("streamed stage 1 reads one row per line (tf.data) and cannot read it. Remove it, "
              "or pass --stream_interactions=false to read the log in memory.")
    if end > start:
        broken = next(value for value in record if "\n" in value or "\r" in value)
        raise CatalogueError(f"{path}, line {start}: a line break inside a quoted value "
                             f"{broken!r}; {advice}")
    quoted = [value for value in record if '"' in value]
    if quoted:
        raise CatalogueError(f"{path}, line {start}: a quote character inside the value "
                             f"{quoted[0]!r}; {advice}")


def text_lines(path, stream, lone_cr=True):
    """The decoded lines of a binary file, split as io.StringIO(newline="") splits them
    (at \\n, \\r\\n and a lone \\r), for csv.reader. A UTF-8 byte-order mark is dropped; a
    byte that is not UTF-8 or a NUL raises CatalogueError naming `path` and the line. The
    one decoder of every CSV file cfimage reads (catalogue, streamed log, CF vectors)."""
    offset = 0
    for number, raw in enumerate(stream, start=1):
        if number == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            raise CatalogueError(
                f"{path}, line 1: a UTF-16 byte-order mark ({raw[:2].hex(' ').upper()}); this "
                "file is UTF-16 text. Save it as UTF-8.")
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a BOM is allowed
        except UnicodeDecodeError as error:
            at = offset + error.start
            raise CatalogueError(
                f"{path}, line {number}: not valid UTF-8 (byte "
                f"{raw[error.start:error.start + 1]!r} at offset {at}). Save the file as "
                "UTF-8.") from None
        if "\x00" in text:
            raise CatalogueError(
                f"{path}, line {number}: a NUL character (\\x00); this is not a text CSV "
                "file (UTF-16 or binary?). Save it as UTF-8 CSV.")
        offset += len(raw)
        if "\r" in (text[:-2] if text.endswith("\r\n") else text[:-1]):
            if not lone_cr:
                raise CatalogueError(
                    f"{path}, line {number}: a carriage return (\\r) alone as a line break "
                    "(old Mac line ends, or inside a value); streamed stage 1 reads lines "
                    "ending in \\n. Save the file with \\n or \\r\\n line ends, or pass "
                    "--stream_interactions=false to read the log in memory.")
            yield from _LONE_CR.split(text)
        else:
            yield text


_LONE_CR = re.compile(r"(?<=\r)(?!\n)(?!$)")


def _frame(header, rows):
    columns = list(zip(*rows)) if rows else [()] * len(header)
    return pd.DataFrame({name: pd.Series(values, dtype=object)
                         for name, values in zip(header, columns)})


def _read_csv(path, what):
    """The whole file through read_csv_chunks -> (frame, file line of each row)."""
    return next(read_csv_chunks(path, what))


def _require_columns(frame, path, columns):
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CatalogueError(
            f"{path}: missing column(s) {missing}; the file has {list(frame.columns)}. "
            "Rename the columns or set the matching --*_column flag.")


def _check_ids(values, path, column, lines, scope="in all", unit="line"):
    values = values.str.strip()
    empty = np.flatnonzero(values.to_numpy() == "")
    if len(empty):
        raise CatalogueError(f"{path}, {unit} {lines[empty[0]]}: empty {column!r} "
                             f"({len(empty)} row(s) {scope}); every row needs an id.")
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
    frame, lines = _read_csv(path, "items")
    _require_columns(frame, path, [spec.item_id_column, spec.image_column, spec.labels_column])
    if frame.empty:
        raise CatalogueError(f"{path}: no rows.")

    ids = _check_ids(frame[spec.item_id_column], path, spec.item_id_column, lines)
    duplicated = np.flatnonzero(ids.duplicated().to_numpy())
    if len(duplicated):
        first = duplicated[0]
        raise CatalogueError(
            f"{path}, line {lines[first]}: duplicate item id {ids.iloc[first]!r} (first at "
            f"line {lines[ids.tolist().index(ids.iloc[first])]}; {len(duplicated)} duplicate "
            "row(s) in all). Item ids must be unique.")

    images = frame[spec.image_column].str.strip()
    paths = np.array([os.path.abspath(os.path.join(root, p)) for p in images])
    _check_image_paths(images, paths, root, spec, path, lines)

    parsed, label_names, dropped = _parse_labels(frame[spec.labels_column], spec, path)
    notes = []
    if dropped:
        left = sum(1 for names in parsed if names and not set(names) & set(label_names))
        notes.append(f"labels with fewer than {spec.min_label_count} items removed: {dropped}"
                     + (f"; {left} item(s) lost all their labels and are now unlabelled"
                        if left else ""))
    column = {name: c for c, name in enumerate(label_names)}
    multi_hot = np.zeros((len(frame), len(label_names)), np.float32)
    for row, names in enumerate(parsed):
        for name in names:
            if name in column:
                multi_hot[row, column[name]] = 1.0
    return ids.to_numpy().astype(str), paths, label_names, multi_hot, notes


def image_file_problem(path):
    """What keeps `path` from being read as a file ("not found", "a directory", "a
    FIFO (named pipe)", "a symlink loop", ...), or None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "not found"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "a symlink loop (a link that leads back to itself)"
        return f"unreadable ({error.strerror})"
    for test, what in [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")]:
        if test(mode):
            return what
    return None if stat.S_ISREG(mode) else "not a regular file"


def _check_image_paths(images, paths, root, spec, path, lines):
    """Every image path names a regular file inside the catalogue directory (after symlinks),
    or CatalogueError naming the line, the path and what it is."""
    problems = [(i, "empty" if not text else image_file_problem(p))
                for i, (text, p) in enumerate(zip(images, paths))]
    problems = [(i, what) for i, what in problems if what]
    if problems:
        first, what = problems[0]
        shown = (f"not found (looked for {paths[first]})" if what == "not found"
                 else f"is {what} ({paths[first]}), not an image file" if what != "empty"
                 else "is empty")
        raise CatalogueError(
            f"{path}, line {lines[first]}: image file {images.iloc[first]!r} {shown}; "
            f"{len(problems)} item(s) in all have no image. Image paths are relative to the "
            "catalogue directory.")
    if spec.allow_outside_paths:
        return
    inside = os.path.join(os.path.realpath(root), "")
    outside = [i for i, p in enumerate(paths) if not os.path.realpath(p).startswith(inside)]
    if outside:
        first = outside[0]
        raise CatalogueError(
            f"{path}, line {lines[first]}: image path {images.iloc[first]!r} resolves to "
            f"{os.path.realpath(paths[first])}, outside the catalogue directory "
            f"{os.path.realpath(root)} ({len(outside)} such path(s) in all). Image paths must "
            "stay inside the catalogue (an absolute path, '..' or a symlink can leave it): "
            "move the images in, or pass --allow_outside_paths if you trust this catalogue.")


def parse_weights(raw, column, path, lines, scope, unit="line"):
    """Interaction weights (a column of strings) -> float32, or CatalogueError naming the file,
    line and value of the first one that is not a finite number > 0."""
    weight = pd.to_numeric(raw.str.strip(), errors="coerce").to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(weight) | (weight <= 0))
    if len(bad):
        raise CatalogueError(
            f"{path}, {unit} {lines[bad[0]]}: {column!r} is {raw.iloc[bad[0]]!r}; weights must "
            f"be finite numbers > 0 ({len(bad)} bad row(s) {scope}).")
    return weight.astype(np.float32)


def check_interactions(frame, lines, path, spec, known_items, scope="in all", unit="line"):
    """The one validator of interaction rows, for a whole file (load_interactions) or a chunk
    of one (stage 1's streaming scan, cfimage/stage1/scan.py).

    frame: string columns as read by read_csv_chunks; lines: their file lines; known_items: a
    set of the items.csv ids. Returns (user_id, item_id, weight frame, rows on unknown items);
    rows on unknown items are dropped under unknown_interaction_items=drop, kept under keep.
    Raises CatalogueError naming the file, line and value of the first bad row (`unit`:
    "row" for a DataFrame that was not read from a file, cfimage/stage1/memory.py).
    """
    _require_columns(frame, path, [spec.user_id_column, spec.interaction_item_column])
    out = pd.DataFrame({
        "user_id": _check_ids(frame[spec.user_id_column], path, spec.user_id_column, lines,
                              scope, unit),
        "item_id": _check_ids(frame[spec.interaction_item_column], path,
                              spec.interaction_item_column, lines, scope, unit),
    })
    if spec.weight_column and spec.weight_column in frame.columns:
        out["weight"] = parse_weights(frame[spec.weight_column], spec.weight_column, path,
                                      lines, scope, unit)
    else:
        out["weight"] = np.float32(1.0)
    known = out["item_id"].isin(known_items).to_numpy()
    n_unknown = int((~known).sum())
    if n_unknown and spec.unknown_interaction_items == "fail":
        first = int(np.argmin(known))
        raise CatalogueError(
            f"{path}, {unit} {lines[first]}: item id {out['item_id'].iloc[first]!r} is not in "
            f"{spec.items_file} ({n_unknown} such row(s) {scope}). Fix the ids, or pass "
            "--unknown_interaction_items=keep (use them to train the two-tower model) "
            "or =drop.")
    if n_unknown and spec.unknown_interaction_items == "drop":
        out = out[known].reset_index(drop=True)
    return out, n_unknown


def unknown_items_note(n_unknown, spec):
    """The log line about rows on items outside items.csv (None when there are none)."""
    if not n_unknown:
        return None
    if spec.unknown_interaction_items == "drop":
        return f"dropped {n_unknown} interaction(s) on items not in the catalogue"
    return (f"kept {n_unknown} interaction(s) on items not in the catalogue "
            "(they train the two-tower model only)")


def load_interactions(root, spec, item_ids):
    """Reads interactions.csv into user_id, item_id, weight[, timestamp]; returns frame, notes."""
    path = os.path.join(root, spec.interactions_file)
    frame, lines = _read_csv(path, "interactions")
    _require_columns(frame, path, [spec.user_id_column, spec.interaction_item_column])
    if frame.empty:
        raise CatalogueError(f"{path}: no rows; stage 1 needs interactions "
                             "(or pass --cf_embeddings with vectors you already have).")
    known_items = set(item_ids)
    out, n_unknown = check_interactions(frame, lines, path, spec, known_items)
    notes = []
    if spec.timestamp_column and spec.timestamp_column in frame.columns:
        # Timestamps are kept for the user's own analysis; training does not read them, so
        # values that are not numbers become NaN, and the log says how many and where.
        raw = frame[spec.timestamp_column].str.strip()
        timestamp = pd.to_numeric(raw, errors="coerce")
        odd = np.flatnonzero(timestamp.isna().to_numpy() & (raw != "").to_numpy())
        if spec.unknown_interaction_items == "drop":
            keep = frame[spec.interaction_item_column].str.strip().isin(known_items).to_numpy()
            timestamp = timestamp[keep]
        out["timestamp"] = timestamp.to_numpy()
        if len(odd):
            notes.append(f"{path}: {len(odd)} {spec.timestamp_column!r} value(s) are not numbers "
                         f"(first: line {lines[odd[0]]}, {raw.iloc[odd[0]]!r}); kept as NaN "
                         "(timestamps are not used in training)")
    if unknown_items_note(n_unknown, spec):
        notes.append(unknown_items_note(n_unknown, spec))
    if not out["item_id"].isin(known_items).any():
        raise CatalogueError(f"{path}: no interaction refers to an item of {spec.items_file}.")
    return out, notes


def load_catalogue(root, spec=None, interactions=True):
    """Loads and validates a catalogue directory.

    interactions=False: items only; the interaction log is neither read nor validated here
    (cfimage.stage1.stream streams and validates it for stage 1 when it is too large for memory).
    """
    spec = spec or CatalogueSpec()
    if not spec.label_separator:
        raise CatalogueError("label_separator must be a non-empty string, e.g. '|'")
    if spec.min_label_count < 1:
        raise CatalogueError(f"min_label_count must be >= 1, not {spec.min_label_count}")
    if spec.unknown_interaction_items not in UNKNOWN_ITEM_POLICIES:
        raise CatalogueError(f"unknown_interaction_items must be one of {UNKNOWN_ITEM_POLICIES}, "
                             f"not {spec.unknown_interaction_items!r}")
    if not os.path.isdir(root):
        raise CatalogueError(f"catalogue directory not found: {root}")
    item_ids, paths, label_names, labels, notes = load_items(root, spec)
    interactions, more_notes = (load_interactions(root, spec, item_ids) if interactions
                                else (None, []))
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
    kind = "multi-label" if catalogue.multi_label else "single-label"
    if catalogue.interactions is None:
        return (f"catalogue {catalogue.root}: {catalogue.num_items} items "
                f"({int(catalogue.labelled.sum())} labelled), {catalogue.num_classes} classes "
                f"({kind}); interactions not loaded (streamed by stage 1)")
    n_int = catalogue.interactions.item_id.isin(set(catalogue.item_ids)).sum()
    return (f"catalogue {catalogue.root}: {catalogue.num_items} items "
            f"({int(catalogue.labelled.sum())} labelled), {catalogue.num_classes} classes "
            f"({kind}), {len(catalogue.interactions)} interactions ({n_int} on catalogue items) "
            f"by {catalogue.interactions.user_id.nunique()} users")
