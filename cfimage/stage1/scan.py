"""The counting pass of stage 1 over the interaction rows, wherever they come from.

`LogCounter` takes validated rows (user_id, item_id, weight) one chunk at a time and counts
what training needs: the user and item vocabularies (the ids with fitted rows; each fit maps
them to integer rows once), per-item counts (logQ correction, popularity, stage 2's
--cf_confidence=sqrt) and weight sums (loss weights are rescaled to mean 1) of the two fits,
the held-out split (cfimage.stage1.holdout) and every row of a bounded, hash-chosen sample of
users for recall@k. Its memory grows with the number of distinct users and items, not rows.

The in-memory path (cfimage/stage1/memory.py) counts its frame as one chunk.
`scan_interactions` is the streaming path's pass over the files (a path or glob, local or
gs://, through tf.io.gfile): read by cfimage.catalogue.reader's one CSV reader in chunks,
validated by its one validator (messages name the file and line), then counted.
The streaming training side is cfimage/stage1/stream.py.
"""

import dataclasses
import io
import os
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from cfimage.catalogue import reader
from cfimage.catalogue.reader import CatalogueError
from cfimage.stage1 import holdout

# --stream_interactions=auto streams logs larger than this: in memory, stage 1 peaked at ~50x
# the CSV's size (5.9 GiB for a 112 MB log, docs/benchmarks.md), so 256 MB already needs ~13 GB.
STREAM_AUTO_BYTES = 256 << 20


@dataclasses.dataclass
class StreamConfig:
    chunk_rows: int = 500_000  # rows per chunk of the validating scan (bounds its memory)
    # Rows held by the training shuffle. The in-memory path shuffles the whole log; here only
    # this window mixes, so a log sorted by user should be written shuffled or in many shards
    # (read interleaved) to keep a batch's in-batch negatives from a few users.
    shuffle_buffer: int = 200_000
    block_lines: int = 4096  # lines decoded per decode_csv call (the unit of the shuffle)


@dataclasses.dataclass
class Phase:
    """What one fit reads: per-item counts (aligned with LogSummary.items), rows, weights."""
    item_counts: np.ndarray  # int64
    n_rows: int
    weight_sum: float

    @property
    def weight_mean(self):
        return self.weight_sum / max(self.n_rows, 1)


@dataclasses.dataclass
class LogSummary:
    n_rows: int  # rows kept (after the unknown-item policy)
    item_counts: pd.Series  # item id -> rows kept: what catalogue.interactions would count
    users: np.ndarray  # sorted ids of the users with fitted rows: the user table's rows
    items: np.ndarray  # sorted ids of the items with fitted rows: the item table's rows
    full: Phase  # rows with weight >= min_rating
    holdout: Phase  # those of them not held out
    n_heldout: int
    eval_rows: pd.DataFrame  # user_id, item_id, weight, held: all rows of the sampled users
    # Streamed files only: where the rows are and how to read them.
    files: list = dataclasses.field(default_factory=list)
    header: list = None  # column names of every file (the first file's; all must agree)
    user_column: str = "user_id"
    item_column: str = "item_id"
    weight_column: str | None = None
    notes: list = dataclasses.field(default_factory=list)

    def phase(self, name):
        return self.full if name == "full" else self.holdout


class LogCounter:
    """Counts validated chunks of rows into a LogSummary (see the module docstring)."""

    def __init__(self, config):
        self.config = config
        self.n_rows = self.n_heldout = 0
        self.all_counts, self.full_counts, self.holdout_counts = {}, {}, {}
        self.full = [0, 0.0]  # rows, weight sum
        self.trained = [0, 0.0]
        self.users = set()
        self.sample, self.threshold = [], np.iinfo(np.int64).max

    def add(self, frame):
        """Counts a frame of user_id, item_id (str), weight; returns its held-out mask."""
        config = self.config
        user, item = frame["user_id"].to_numpy(str), frame["item_id"].to_numpy(str)
        weight = frame["weight"].to_numpy(np.float64)
        held = (holdout.heldout_mask(user, item, config.holdout_fraction, config.seed).numpy()
                if config.holdout_fraction > 0 else np.zeros(len(frame), bool))
        fitted = (np.ones(len(frame), bool) if config.min_rating is None
                  else weight >= config.min_rating)
        trained = fitted & ~held
        self.n_rows += len(frame)
        self.n_heldout += int(held.sum())
        _add_counts(self.all_counts, item)
        _add_counts(self.full_counts, item[fitted])
        _add_counts(self.holdout_counts, item[trained])
        for total, rows in [(self.full, fitted), (self.trained, trained)]:
            total[0] += int(rows.sum())
            total[1] += float(weight[rows].sum())
        self.users.update(pd.unique(user[fitted]))
        # Bottom-k sample of users by hash: every row of a kept user is kept; memory stays
        # within ~2 x max_eval_users users' rows.
        codes, uniques = pd.factorize(user)
        rank = holdout.user_rank(uniques, config.seed)[codes]
        take = rank < self.threshold
        if take.any():
            self.sample.append(pd.DataFrame({"user_id": user[take], "item_id": item[take],
                                             "weight": weight[take], "held": held[take],
                                             "rank": rank[take]}))
            ranks = np.unique(np.concatenate([part["rank"].to_numpy() for part in self.sample]))
            if len(ranks) > 2 * config.max_eval_users:
                self.threshold = ranks[config.max_eval_users]
                self.sample = [part[part["rank"].to_numpy() < self.threshold]
                               for part in self.sample]
        return held

    def summary(self, **where):
        """The LogSummary of the rows added; `where`: LogSummary's file fields."""
        items = np.array(sorted(k for k, v in self.full_counts.items() if v > 0), dtype=str)
        eval_rows = (pd.concat(self.sample, ignore_index=True) if self.sample
                     else pd.DataFrame(columns=["user_id", "item_id", "weight", "held", "rank"]))
        ranks = np.unique(eval_rows["rank"].to_numpy(np.int64))
        if len(ranks) > self.config.max_eval_users:
            eval_rows = eval_rows[eval_rows["rank"] < ranks[self.config.max_eval_users]]
        return LogSummary(
            n_rows=self.n_rows,
            item_counts=pd.Series(self.all_counts, dtype=np.int64).sort_index(),
            users=np.array(sorted(self.users), dtype=str), items=items,
            full=Phase(_aligned(self.full_counts, items), *self.full),
            holdout=Phase(_aligned(self.holdout_counts, items), *self.trained),
            n_heldout=self.n_heldout,
            eval_rows=eval_rows.drop(columns="rank").reset_index(drop=True), **where)


def _add_counts(total, items):
    counts = pd.Series(items).value_counts(sort=False)  # hashing, not sorting, the ids
    for value, count in zip(counts.index.tolist(), counts.tolist()):
        total[value] = total.get(value, 0) + count


def _aligned(counts, items):
    return np.array([counts.get(item, 0) for item in items.tolist()], np.int64)


def interaction_files(root, pattern):
    """Sorted files matching `pattern` (relative to the catalogue unless absolute or a URL)."""
    if "://" in pattern or os.path.isabs(pattern):
        path = pattern
    elif not os.path.isdir(root):
        raise CatalogueError(f"catalogue directory not found: {root}")
    else:
        path = os.path.join(root, pattern)
    files = sorted(tf.io.gfile.glob(path))
    if not files:
        raise CatalogueError(f"interactions file not found: no file matches {path}")
    return files


def should_stream(mode, root, pattern, threshold=STREAM_AUTO_BYTES):
    """--stream_interactions: 'true', 'false', or 'auto' -> (stream, why)."""
    files = interaction_files(root, pattern)
    size = sum(tf.io.gfile.stat(f).length for f in files)
    single = len(files) == 1 and os.path.abspath(files[0]) == os.path.abspath(
        os.path.join(root, pattern))
    why = f"{len(files)} file(s), {size / 1e9:.2f} GB"
    if mode == "false":
        if not single:
            raise CatalogueError(
                f"--interactions_file={pattern!r} matches {why}: only one local file can be "
                "read into memory; pass --stream_interactions=true (or auto) to stream them")
        return False, why
    if mode == "true":
        return True, why
    return (not single) or size > threshold, why


class _GFileReader(io.RawIOBase):
    """A tf.io.gfile file as a raw binary stream (GFile lacks parts of the file API)."""

    def __init__(self, path):
        self._file = tf.io.gfile.GFile(path, "rb")

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._file.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self):
        self._file.close()
        super().close()


def scan_interactions(files, spec, item_ids, config, stream=None, log=print):
    """One validating, counting pass over the interaction files -> LogSummary (see module doc).

    spec: a catalogue.CatalogueSpec (column names, unknown-item policy); item_ids: the ids of
    items.csv; config: the TwoTowerConfig (held-out share, min_rating, seed, eval users).
    """
    stream = stream or StreamConfig()
    start = time.time()
    known_items = set(np.asarray(item_ids).astype(str))
    counter = LogCounter(config)
    header, n_unknown = None, 0
    for path in files:
        with io.BufferedReader(_GFileReader(path), 1 << 20) as f:
            # one_row_per_line: what this scan accepts, stream.py's decode_csv reads alike.
            for chunk, lines in reader.read_csv_chunks(path, "interactions", stream.chunk_rows,
                                                       stream=f, one_row_per_line=True):
                if header is None:
                    header = list(chunk.columns)
                elif list(chunk.columns) != header:
                    raise CatalogueError(
                        f"{path}: header {list(chunk.columns)} differs from {header} in "
                        f"{files[0]}; every interactions file must have the same columns.")
                frame, unknown = reader.check_interactions(chunk, lines, path, spec,
                                                           known_items, "in this chunk")
                n_unknown += unknown
                if len(frame):
                    counter.add(frame)
    if counter.n_rows == 0:
        raise CatalogueError(f"{files[0]}: no rows; stage 1 needs interactions "
                             "(or pass --cf_embeddings with vectors you already have).")
    note = reader.unknown_items_note(n_unknown, spec)
    summary = counter.summary(
        files=list(files), header=header, user_column=spec.user_id_column,
        item_column=spec.interaction_item_column,
        weight_column=spec.weight_column if spec.weight_column in header else None,
        notes=[note] if note else [])
    if not summary.item_counts.index.isin(known_items).any():
        raise CatalogueError(f"{files[0]}: no interaction refers to an item of "
                             f"{spec.items_file}.")
    log(f"stage 1 (streaming): scanned {summary.n_rows} interactions in {len(files)} file(s) "
        f"in {time.time() - start:.1f}s: {len(summary.users)} users, "
        f"{len(summary.item_counts)} items, {summary.n_heldout} held out")
    return summary
