"""Reading, writing and aligning CF item vectors (stage 1 outputs).

File formats (for users who bring their own vectors instead of training stage 1):

* ``.npz``: two arrays, ``ids`` (shape ``(n,)``, strings) and ``vectors`` (shape ``(n, d)``,
  finite floats; stored as float32).
* ``.csv``: a header ``item_id,v0,v1,...,v{d-1}``, then one row per item: the item id followed
  by its ``d`` finite numbers.

In both, item ids must be unique and non-empty and every item must have the same dimension
``d >= 1``. Items of the catalogue that are absent from the file simply get no vector (their CF
loss is masked); ids in the file that are not in the catalogue are ignored and counted.
"""

import csv
import os
import tempfile

import numpy as np
import pandas as pd

from cfimage.catalogue import reader

SUFFIXES = (".npz", ".csv")
PROJECTOR_TENSOR = "embedding/.ATTRIBUTES/VARIABLE_VALUE"


def _suffix(path):
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(
            f"{path}: unknown embedding file extension {suffix!r}; use one of {SUFFIXES}")
    return suffix


def _check_arrays(ids, vectors, source, row_name=lambda row: f"row {row}"):
    """Validates ids/vectors; returns (ids as str array, vectors as float32).

    ``row_name(i)`` says where the i-th item sits in the source (0-based rows by default).
    """
    ids = np.asarray(ids)
    vectors = np.asarray(vectors)
    if ids.ndim != 1:
        raise ValueError(f"{source}: ids must be 1-d, got shape {ids.shape}")
    if len(ids) == 0:
        raise ValueError(f"{source}: no items (empty file or empty arrays)")
    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or vectors.shape[1] < 1:
        raise ValueError(
            f"{source}: inconsistent dimension: vectors have shape {vectors.shape}, expected "
            f"({len(ids)}, d) with d >= 1 to match {len(ids)} ids")
    real = np.issubdtype(vectors.dtype, np.integer) or np.issubdtype(vectors.dtype, np.floating)
    if not real:
        raise ValueError(f"{source}: vectors must be real numbers, got dtype {vectors.dtype}")
    if ids.dtype.kind == "S":  # bytes: ids must be UTF-8 text
        for row, raw in enumerate(ids.tolist()):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{source}: {row_name(row)}: item id {raw!r} is not valid UTF-8 (byte "
                    f"{raw[error.start:error.start + 1]!r}); store the ids as UTF-8 text.") \
                    from None
        ids = np.char.decode(ids, "utf-8")
    ids = ids.astype(str)
    first_row = {}
    for row, item_id in enumerate(ids.tolist()):
        if item_id == "":
            raise ValueError(f"{source}: {row_name(row)}: empty item id")
        if item_id in first_row:
            raise ValueError(
                f"{source}: {row_name(row)}: duplicate item id {item_id!r} (first at "
                f"{row_name(first_row[item_id])})")
        first_row[item_id] = row
    vectors = vectors.astype(np.float32)
    bad = np.argwhere(~np.isfinite(vectors))
    if len(bad):
        row, col = bad[0]
        raise ValueError(
            f"{source}: {row_name(row)} (item {str(ids[row])!r}), column {col}: non-finite value "
            f"{float(vectors[row, col])} (NaN/inf are not allowed; {len(bad)} such values in all)")
    return ids, vectors


def save_embeddings(path, item_ids, vectors):
    """Writes vectors to ``path`` (.npz or .csv, see module doc), atomically."""
    path = str(path)
    suffix = _suffix(path)
    ids, vectors = _check_arrays(item_ids, vectors, f"save_embeddings({path})")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # A temp file in the same folder + os.replace: readers never see a half-written file.
    handle, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=suffix)
    try:
        if suffix == ".npz":
            with os.fdopen(handle, "wb") as f:
                np.savez(f, ids=ids, vectors=vectors)
        else:
            with os.fdopen(handle, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["item_id"] + [f"v{j}" for j in range(vectors.shape[1])])
                for item_id, vector in zip(ids, vectors):
                    # repr of a float32 round-trips exactly.
                    writer.writerow([item_id] + [repr(float(v)) for v in vector])
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _load_npz(path):
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # zipfile/pickle/OS errors: all mean "not a readable npz".
        raise ValueError(f"{path}: cannot read as .npz: {error}") from error
    with archive:
        missing = [name for name in ("ids", "vectors") if name not in archive.files]
        if missing:
            raise ValueError(
                f"{path}: missing array(s) {missing}; found {archive.files}, expected 'ids' "
                f"(n,) and 'vectors' (n, d)")
        return _check_arrays(archive["ids"], archive["vectors"], path)


def _load_csv(path):
    try:
        f = open(path, "rb")
    except OSError as error:
        raise ValueError(f"{path}: cannot read the embeddings file ({error.strerror})") from None
    with f:
        try:
            return _parse_csv(path, csv.reader(reader.text_lines(path, f), strict=True))
        except csv.Error as error:
            raise ValueError(f"{path}: malformed CSV ({error}); quote ids that contain a comma, "
                             'a quote or a line break, with quotes inside doubled ("")') from None


def _parse_csv(path, rows):
    """Rows of a vectors CSV (decoded by the catalogue's reader: UTF-8, a byte-order mark
    allowed, errors naming the file and line) -> validated (ids, vectors)."""
    header = next(rows, None)
    if not header:
        raise ValueError(f"{path}: empty file; expected a header item_id,v0,v1,...")
    dim = len(header) - 1
    expected = ["item_id"] + [f"v{j}" for j in range(dim)]
    if dim < 1 or [name.strip() for name in header] != expected:
        raise ValueError(
            f"{path}: line 1: bad header {header[:5]}{'...' if len(header) > 5 else ''}; "
            f"expected item_id,v0,v1,...,v<d-1> (missing or misnamed columns)")
    ids, vectors, lines = [], [], []
    line = rows.line_num + 1
    for row in rows:
        if row:  # a blank line is harmless
            if len(row) != dim + 1:
                raise ValueError(
                    f"{path}: line {line}: inconsistent dimension: {len(row) - 1} values, "
                    f"header says {dim}")
            try:
                values = [float(v) for v in row[1:]]
            except ValueError:
                bad = next(v for v in row[1:] if not _is_float(v))
                raise ValueError(
                    f"{path}: line {line} (item {row[0]!r}): value {bad!r} is not a number"
                ) from None
            ids.append(row[0])
            vectors.append(values)
            lines.append(line)
        line = rows.line_num + 1
    if not ids:
        raise ValueError(f"{path}: no data rows after the header")
    # A CSV user thinks in file lines (the header is line 1), not in 0-based rows.
    return _check_arrays(np.array(ids, dtype=str), np.array(vectors, dtype=np.float64), path,
                         row_name=lambda row: f"line {lines[row]}")


def _is_float(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_embeddings(path):
    """Reads ``path`` (.npz or .csv, see module doc) -> (ids: str array, vectors: float32)."""
    path = str(path)
    suffix = _suffix(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: embedding file not found")
    if suffix == ".npz":
        return _load_npz(path)
    return _load_csv(path)


def align_embeddings(catalogue_item_ids, ids, vectors, source, log=print):
    """Puts file vectors into catalogue order.

    Returns (vectors_aligned float32 (n_catalogue, d), has_vector bool (n_catalogue,)).
    Catalogue items absent from the file get zeros and has_vector False; file ids that are not
    in the catalogue are ignored and counted in the logged message.
    """
    catalogue = np.asarray(catalogue_item_ids).astype(str)
    ids, vectors = _check_arrays(ids, vectors, source)
    row_of = {item_id: row for row, item_id in enumerate(ids)}
    rows = np.array([row_of.get(item_id, -1) for item_id in catalogue], dtype=np.int64)
    has_vector = rows >= 0
    if not has_vector.any():
        raise ValueError(
            f"{source}: none of the {len(catalogue)} catalogue items has a vector (file ids "
            f"look like {ids[:3].tolist()}, catalogue ids like {catalogue[:3].tolist()})")
    aligned = np.zeros((len(catalogue), vectors.shape[1]), dtype=np.float32)
    aligned[has_vector] = vectors[rows[has_vector]]
    n_extra = len(ids) - int(has_vector.sum())
    log(f"{source}: vectors for {int(has_vector.sum())}/{len(catalogue)} catalogue items; "
        f"{n_extra} ids in the file are not in the catalogue and were ignored")
    return aligned, has_vector


def _tsv_field(value):
    if isinstance(value, (list, tuple, set, np.ndarray)):
        value = "|".join(str(v) for v in value)
    elif value is None or (isinstance(value, float) and np.isnan(value)):
        value = ""
    return " ".join(str(value).split())  # No tabs or newlines inside a field.


def write_projector(logdir, item_ids, vectors, metadata=None, has_vector=None):
    """Writes a TensorBoard embedding-projector view of the items that have vectors.

    Writes a checkpoint of one tf.Variable (the vectors), ``metadata.tsv`` and
    ``projector_config.pbtxt`` into ``logdir``. ``metadata`` is a DataFrame or list of dicts:
    with an ``item_id`` column it is joined on it, otherwise it must be aligned with
    ``item_ids``. ``has_vector`` defaults to "row is not all zeros". The TSV has a header row
    whenever it has more than one column (TensorBoard's rule: a single column has none).
    """
    import tensorflow as tf  # Imported late: the I/O above works without TensorFlow.
    from tensorboard.plugins import projector

    item_ids = np.asarray(item_ids).astype(str)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(item_ids):
        raise ValueError(
            f"write_projector: vectors shape {vectors.shape} does not match {len(item_ids)} ids")
    if has_vector is None:
        has_vector = np.any(vectors != 0, axis=1)
    has_vector = np.asarray(has_vector, dtype=bool)
    if not has_vector.any():
        raise ValueError("write_projector: no item has a vector; nothing to show")

    table = pd.DataFrame({"item_id": item_ids})
    if metadata is not None:
        extra = pd.DataFrame(metadata)
        if "item_id" in extra.columns:
            extra = extra.assign(item_id=extra["item_id"].astype(str))
            extra = extra.drop_duplicates("item_id")
            table = table.merge(extra, on="item_id", how="left")
        elif len(extra) == len(item_ids):
            table = pd.concat([table, extra.reset_index(drop=True)], axis=1)
        else:
            raise ValueError(
                f"write_projector: metadata has {len(extra)} rows and no item_id column; it "
                f"must have an item_id column or one row per item ({len(item_ids)})")
    table = table[has_vector]

    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, "metadata.tsv"), "w") as f:
        if table.shape[1] > 1:
            f.write("\t".join(_tsv_field(c) for c in table.columns) + "\n")
        for row in table.itertuples(index=False):
            f.write("\t".join(_tsv_field(v) for v in row) + "\n")

    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(vectors[has_vector]))
    checkpoint.save(os.path.join(logdir, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = PROJECTOR_TENSOR
    embedding.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(logdir, config)
    # TensorBoard lists a folder as a run only when it holds an events file, and the
    # projector looks only at runs: without this one it shows nothing (`/runs` is []).
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        tf.summary.text("embeddings", f"{int(has_vector.sum())} item vectors of dimension "
                        f"{vectors.shape[1]}; metadata columns: {', '.join(table.columns)}. "
                        "Open the PROJECTOR tab.", step=0)
    writer.close()
