"""The one pass of streaming stage 1 over the interaction files: validate, count, sample.

`scan_interactions` reads the files (a path or glob, local or gs://, through tf.io.gfile) in
pandas chunks. It validates every row with the policies of catalogue.load_interactions (empty
ids, weights that are not finite numbers > 0, items not in items.csv per
--unknown_interaction_items; messages name the file and the line) and counts what training
needs: the user vocabulary, per-item interaction counts (logQ correction, popularity, stage 2's
--cf_confidence=sqrt) and weight sums (loss weights are rescaled to mean 1). It also keeps every
row of a bounded, hash-chosen sample of users (`StreamConfig.max_eval_users`) for recall@k.
Memory grows with the number of distinct users and items, not with the number of rows.
The training side is cfimage/stage1/stream.py.
"""

import dataclasses
import io
import os
import time

import numpy as np
import pandas as pd
import tensorflow as tf

from cfimage.catalogue.reader import CatalogueError, parse_weights

HASH_BUCKETS = 1 << 20  # resolution of the held-out share: 1e-6
# --stream_interactions=auto streams logs larger than this: in memory, stage 1 peaked at ~50x
# the CSV's size (5.9 GiB for a 112 MB log, docs/benchmarks.md), so 256 MB already needs ~13 GB.
STREAM_AUTO_BYTES = 256 << 20


@dataclasses.dataclass
class StreamConfig:
    chunk_rows: int = 500_000  # rows per pandas chunk of the scan (bounds its memory)
    # Rows held by the training shuffle. The in-memory path shuffles the whole log; here only
    # this window mixes, so a log sorted by user should be written shuffled or in many shards
    # (read interleaved) to keep a batch's in-batch negatives from a few users.
    shuffle_buffer: int = 200_000
    max_eval_users: int = 10_000  # users whose held-out pairs score recall@k
    block_lines: int = 4096  # lines decoded per decode_csv call


@dataclasses.dataclass
class Phase:
    """What one fit reads: its item vocabulary and counts, and its weight mean."""
    item_counts: pd.Series  # item id -> rows, sorted by id; its index is the item vocabulary
    n_rows: int
    weight_sum: float

    @property
    def weight_mean(self):
        return self.weight_sum / max(self.n_rows, 1)


@dataclasses.dataclass
class LogSummary:
    files: list
    header: list  # column names of every file (the first file's; all must agree)
    user_column: str
    item_column: str
    weight_column: str | None
    n_rows: int  # rows kept (after the unknown-item policy)
    item_counts: pd.Series  # item id -> rows kept: what catalogue.interactions would count
    users: np.ndarray  # sorted ids of the users with fitted rows
    full: Phase  # rows with weight >= min_rating
    holdout: Phase  # those of them not held out
    n_heldout: int
    eval_rows: pd.DataFrame  # user_id, item_id, weight, held: all rows of the sampled users
    listed_ids: np.ndarray  # items.csv ids: the unknown-item policy's reference
    drop_unknown: bool
    notes: list


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


def heldout_mask(user_ids, item_ids, fraction, seed):
    """True where the pair (user, item) is held out: a seeded hash, the same in numpy and
    inside tf.data, so both passes agree without storing the split."""
    key = tf.strings.join([user_ids, item_ids], separator="\x1f")
    bucket = tf.strings.to_hash_bucket_strong(key, HASH_BUCKETS, key=[seed, 1])
    return bucket < int(round(fraction * HASH_BUCKETS))


def _user_rank(user_ids, seed):
    """Seeded hash of user ids: the sample for recall@k is the users of smallest rank."""
    return tf.strings.to_hash_bucket_strong(user_ids, 1 << 62, key=[seed, 2]).numpy()


class _GFileReader(io.RawIOBase):
    """A tf.io.gfile file as the raw stream pandas reads (GFile lacks parts of the file API)."""

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


def _chunks(path, chunk_rows):
    """(first file line, chunk of str columns) of one CSV file; line 1 is the header."""
    try:
        with io.BufferedReader(_GFileReader(path), 1 << 20) as f:
            reader = pd.read_csv(f, dtype=str, keep_default_na=False, skip_blank_lines=False,
                                 chunksize=chunk_rows, encoding="utf-8-sig")
            line = 2
            for chunk in reader:
                chunk.columns = [str(c).strip() for c in chunk.columns]
                yield line, chunk
                line += len(chunk)
    except UnicodeDecodeError as error:
        raise CatalogueError(f"{path}: not valid UTF-8 ({error}). Save the file as UTF-8.") \
            from None
    except pd.errors.EmptyDataError:
        raise CatalogueError(f"{path}: empty file; the first line must name the columns.") \
            from None
    except pd.errors.ParserError as error:
        raise CatalogueError(
            f"{path}: malformed CSV ({error}; line numbers count from the header). Every row "
            "needs one value per column; quote values that contain a comma.") from None


def _check_chunk(chunk, lines, path, summary, spec, known_items):
    """Validated user_id, item_id, weight (float32) of a chunk, as catalogue.load_interactions
    checks them; returns (frame, number of rows on items outside items.csv)."""
    out = {}
    for name, column in [("user_id", summary.user_column), ("item_id", summary.item_column)]:
        values = chunk[column].str.strip()
        empty = np.flatnonzero(values.to_numpy() == "")
        if len(empty):
            raise CatalogueError(f"{path}, line {lines[empty[0]]}: empty {column!r} "
                                 f"({len(empty)} row(s) in this chunk); every row needs an id.")
        out[name] = values.to_numpy(object)
    if summary.weight_column:
        out["weight"] = parse_weights(chunk[summary.weight_column], summary.weight_column, path,
                                      lines, "in this chunk")
    else:
        out["weight"] = np.ones(len(chunk), np.float32)
    frame = pd.DataFrame(out)
    known = frame["item_id"].isin(known_items).to_numpy()
    n_unknown = int((~known).sum())
    if n_unknown and spec.unknown_interaction_items == "fail":
        first = int(np.argmin(known))
        raise CatalogueError(
            f"{path}, line {lines[first]}: item id {frame['item_id'].iloc[first]!r} is not in "
            f"{spec.items_file} ({n_unknown} such row(s) in this chunk). Fix the ids, or pass "
            "--unknown_interaction_items=keep (use them to train the two-tower model) "
            "or =drop.")
    if n_unknown and spec.unknown_interaction_items == "drop":
        frame = frame[known].reset_index(drop=True)
    return frame, n_unknown


def _add_counts(total, items):
    counts = pd.Series(items).value_counts()
    return counts if total is None else total.add(counts, fill_value=0)


def scan_interactions(files, spec, item_ids, config, stream=None, log=print):
    """One validating, counting pass over the interaction files -> LogSummary (see module doc).

    spec: a catalogue.CatalogueSpec (column names, unknown-item policy); item_ids: the ids of
    items.csv; config: the TwoTowerConfig (held-out share, min_rating, seed).
    """
    stream = stream or StreamConfig()
    start = time.time()
    known_items = set(np.asarray(item_ids).astype(str))
    header = None
    n_rows = n_unknown = n_heldout = 0
    all_counts = full_counts = holdout_counts = None
    full_weight = holdout_weight = 0.0
    n_full = n_holdout = 0
    users = set()
    sample, threshold = [], np.iinfo(np.int64).max
    summary = None
    for path in files:
        for first_line, chunk in _chunks(path, stream.chunk_rows):
            if header is None:
                header = list(chunk.columns)
                missing = [c for c in (spec.user_id_column, spec.interaction_item_column)
                           if c not in header]
                if missing:
                    raise CatalogueError(
                        f"{path}: missing column(s) {missing}; the file has {header}. "
                        "Rename the columns or set the matching --*_column flag.")
                weight_column = (spec.weight_column if spec.weight_column in header
                                 and spec.weight_column else None)
                summary = LogSummary(
                    files=list(files), header=header, user_column=spec.user_id_column,
                    item_column=spec.interaction_item_column, weight_column=weight_column,
                    n_rows=0, item_counts=None, users=None, full=None, holdout=None,
                    n_heldout=0, eval_rows=None,
                    listed_ids=np.asarray(item_ids).astype(str),
                    drop_unknown=spec.unknown_interaction_items == "drop", notes=[])
            elif list(chunk.columns) != header:
                raise CatalogueError(
                    f"{path}: header {list(chunk.columns)} differs from {header} in "
                    f"{files[0]}; every interactions file must have the same columns.")
            lines = first_line + np.arange(len(chunk))
            blank = (chunk == "").all(axis=1).to_numpy()  # pandas skips these by default
            chunk, lines = chunk[~blank], lines[~blank]
            frame, unknown = _check_chunk(chunk, lines, path, summary, spec, known_items)
            n_unknown += unknown
            n_rows += len(frame)
            if not len(frame):
                continue
            user, item, weight = (frame["user_id"].to_numpy(object),
                                  frame["item_id"].to_numpy(object),
                                  frame["weight"].to_numpy(np.float64))
            held = (heldout_mask(user.astype(str), item.astype(str), config.holdout_fraction,
                                 config.seed).numpy() if config.holdout_fraction > 0
                    else np.zeros(len(frame), bool))
            fitted = (np.ones(len(frame), bool) if config.min_rating is None
                      else weight >= config.min_rating)
            trained = fitted & ~held
            all_counts = _add_counts(all_counts, item)
            full_counts = _add_counts(full_counts, item[fitted])
            holdout_counts = _add_counts(holdout_counts, item[trained])
            full_weight += weight[fitted].sum()
            holdout_weight += weight[trained].sum()
            n_full += int(fitted.sum())
            n_holdout += int(trained.sum())
            n_heldout += int(held.sum())
            codes, uniques = pd.factorize(user[fitted])
            users.update(uniques)
            # Bottom-k sample of users by hash: every row of a kept user is kept, memory stays
            # within ~2 x max_eval_users users' rows.
            codes, uniques = pd.factorize(user)
            rank = _user_rank(uniques.astype(str), config.seed)[codes]
            take = rank < threshold
            if take.any():
                sample.append(frame[take].assign(held=held[take], rank=rank[take]))
                ranks = np.unique(np.concatenate([part["rank"].to_numpy() for part in sample]))
                if len(ranks) > 2 * stream.max_eval_users:
                    threshold = ranks[stream.max_eval_users]
                    sample = [part[part["rank"].to_numpy() < threshold] for part in sample]
    if summary is None or n_rows == 0:
        raise CatalogueError(f"{files[0]}: no rows; stage 1 needs interactions "
                             "(or pass --cf_embeddings with vectors you already have).")
    if not all_counts.index.isin(known_items).any():
        raise CatalogueError(f"{files[0]}: no interaction refers to an item of "
                             f"{spec.items_file}.")
    eval_rows = pd.concat(sample, ignore_index=True) if sample else pd.DataFrame(
        columns=["user_id", "item_id", "weight", "held", "rank"])
    ranks = np.unique(eval_rows["rank"].to_numpy(np.int64))
    if len(ranks) > stream.max_eval_users:
        eval_rows = eval_rows[eval_rows["rank"] < ranks[stream.max_eval_users]]
    summary.n_rows = n_rows
    summary.item_counts = all_counts.astype(np.int64).sort_index()
    summary.users = np.array(sorted(users))
    summary.full = Phase(full_counts[full_counts > 0].astype(np.int64).sort_index(), n_full,
                         float(full_weight))
    summary.holdout = Phase(holdout_counts[holdout_counts > 0].astype(np.int64).sort_index(),
                            n_holdout, float(holdout_weight))
    summary.n_heldout = n_heldout
    summary.eval_rows = eval_rows.drop(columns="rank").reset_index(drop=True)
    if n_unknown:
        summary.notes.append(
            f"dropped {n_unknown} interaction(s) on items not in the catalogue" if
            summary.drop_unknown else f"kept {n_unknown} interaction(s) on items not in the "
            "catalogue (they train the two-tower model only)")
    log(f"stage 1 (streaming): scanned {n_rows} interactions in {len(files)} file(s) in "
        f"{time.time() - start:.1f}s: {len(summary.users)} users, {len(summary.item_counts)} "
        f"items, {n_heldout} held out")
    return summary
