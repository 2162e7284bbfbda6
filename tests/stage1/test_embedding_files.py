"""Tests of stage 1's file I/O (cfimage.stage1.embedding_files): the vector files a user
passes with --cf_embeddings, and the TensorBoard projector view."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cfimage.stage1 import embedding_files as ce

import tensorflow as tf  # noqa: E402  (after cfimage, which selects Keras 2 for TFRS)
from google.protobuf import text_format  # noqa: E402
from tensorboard.plugins import projector  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


IDS = np.array(["m1", "m2", "m3"])
VECTORS = np.array([[0.1, -2.5], [1e-7, 3.0], [0.0, 1 / 3]], np.float32)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_save_load_round_trip(tmp_path, suffix):
    path = tmp_path / ("sub/emb" + suffix)
    ce.save_embeddings(path, IDS, VECTORS)
    ids, vectors = ce.load_embeddings(path)
    np.testing.assert_array_equal(ids, IDS)
    np.testing.assert_array_equal(vectors, VECTORS)  # Exact: float32 repr round-trips.
    assert vectors.dtype == np.float32
    assert os.listdir(tmp_path / "sub") == ["emb" + suffix]  # No temp file left behind.


def test_csv_format_is_documented_layout(tmp_path):
    path = tmp_path / "emb.csv"
    ce.save_embeddings(path, IDS, VECTORS)
    lines = path.read_text().splitlines()
    assert lines[0] == "item_id,v0,v1" and lines[1].startswith("m1,0.1") and len(lines) == 4


def test_save_rejects_bad_arrays_and_keeps_old_file(tmp_path):
    path = tmp_path / "emb.npz"
    ce.save_embeddings(path, IDS, VECTORS)
    with pytest.raises(ValueError, match=r"row 1 \(item 'm2'\), column 0: non-finite value nan"):
        ce.save_embeddings(path, IDS, np.array([[0, 0], [np.nan, 0], [0, 0]]))
    np.testing.assert_array_equal(ce.load_embeddings(path)[1], VECTORS)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name,text,match", [
    ("e.csv", "", "empty file"),
    ("e.csv", "item_id,v0\n", "no data rows"),
    ("e.csv", "id,v0\na,1\n", "line 1: bad header"),
    ("e.csv", "item_id,v0,v2\na,1,2\n", "line 1: bad header"),
    ("e.csv", "item_id\na\n", "line 1: bad header"),
    ("e.csv", "item_id,v0,v1\na,1,2\nb,3\n", "line 3: inconsistent dimension: 1 values"),
    ("e.csv", "item_id,v0\na,1\nb,2\na,3\n", r"line 4: duplicate item id 'a' \(first at line 2\)"),
    ("e.csv", "item_id,v0\na,1\nb,nan\n", r"line 3 \(item 'b'\), column 0: non-finite value nan"),
    ("e.csv", "item_id,v0\na,inf\n", r"line 2 \(item 'a'\), column 0: non-finite value inf"),
    ("e.csv", "item_id,v0\na,1\nb,one\n", r"line 3 \(item 'b'\): value 'one' is not a number"),
    ("e.csv", "item_id,v0\n,1\n", "line 2: empty item id"),
    ("e.txt", "item_id,v0\na,1\n", "unknown embedding file extension '.txt'"),
    ("e.npz", "not a zip", "cannot read as .npz"),
])
def test_load_errors_name_file_and_row(tmp_path, name, text, match):
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError, match=match) as error:
        ce.load_embeddings(path)
    assert str(error.value).startswith(path)


@pytest.mark.parametrize("arrays,match", [
    (dict(ids=IDS), r"missing array\(s\) \['vectors'\]"),
    (dict(vectors=VECTORS), r"missing array\(s\) \['ids'\]"),
    (dict(ids=IDS, vectors=VECTORS[:2]), r"inconsistent dimension: vectors have shape \(2, 2\)"),
    (dict(ids=IDS, vectors=VECTORS[:, 0]), "inconsistent dimension"),
    (dict(ids=np.array(["a", "b", "a"]), vectors=VECTORS),
     r"row 2: duplicate item id 'a' \(first at row 0\)"),
    (dict(ids=IDS, vectors=np.where(np.eye(3, 2) > 0, np.inf, 0)),
     r"row 0 \(item 'm1'\), column 0: non-finite value inf"),
    (dict(ids=np.array([], str), vectors=np.zeros((0, 2))), "no items"),
])
def test_load_npz_errors(tmp_path, arrays, match):
    path = str(tmp_path / "e.npz")
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match) as error:
        ce.load_embeddings(path)
    assert str(error.value).startswith(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        ce.load_embeddings(tmp_path / "absent.csv")


def test_align_embeddings():
    messages = []
    aligned, has_vector = ce.align_embeddings(["m3", "new", "m1"], IDS, VECTORS, "f.csv",
                                              log=messages.append)
    np.testing.assert_array_equal(has_vector, [True, False, True])
    np.testing.assert_array_equal(aligned, [VECTORS[2], [0, 0], VECTORS[0]])
    assert aligned.dtype == np.float32
    assert "2/3 catalogue items" in messages[0] and "1 ids in the file" in messages[0]
    with pytest.raises(ValueError, match="f.csv: none of the 2 catalogue items has a vector"):
        ce.align_embeddings(["x", "y"], IDS, VECTORS, "f.csv", log=messages.append)


def test_write_projector(tmp_path):
    logdir = str(tmp_path / "projector")
    vectors = np.array([[1, 2], [0, 0], [3, 4]], np.float32)
    metadata = pd.DataFrame({"item_id": ["m3", "m1", "m2"],
                             "labels": [["Drama"], ["Comedy", "Drama"], []],
                             "title": ["C\tc", "A", "B"]})
    ce.write_projector(logdir, ["m1", "m2", "m3"], vectors, metadata)

    config = projector.ProjectorConfig()
    with open(os.path.join(logdir, "projector_config.pbtxt")) as f:
        text_format.Parse(f.read(), config)
    embedding = config.embeddings[0]
    assert embedding.metadata_path == "metadata.tsv"
    # What TensorBoard's projector plugin does: read that tensor from the latest checkpoint.
    reader = tf.train.load_checkpoint(logdir)
    np.testing.assert_array_equal(reader.get_tensor(embedding.tensor_name), vectors[[0, 2]])
    with open(os.path.join(logdir, embedding.metadata_path)) as f:
        rows = f.read().splitlines()
    assert rows == ["item_id\tlabels\ttitle", "m1\tComedy|Drama\tA", "m3\tDrama\tC c"]
    # TensorBoard lists the folder as a run (the projector's only places to look) only when it
    # holds an events file: tests/test_tensorboard.py asks TensorBoard itself.
    (events,) = [n for n in os.listdir(logdir) if n.startswith("events.out.tfevents.")]
    texts = [tf.make_ndarray(v.tensor).item().decode() for event in
             tf.compat.v1.train.summary_iterator(os.path.join(logdir, events))
             for v in event.summary.value]
    assert texts == ["2 item vectors of dimension 2; metadata columns: item_id, labels, title. "
                     "Open the PROJECTOR tab."]


@pytest.mark.slow
def test_loading_vector_files_imports_neither_tfrs_nor_tf_keras():
    """--cf_embeddings reads a file: embedding_files needs neither TFRS nor tf_keras, and the
    stage-1 pipeline loads TFRS only to train (fresh processes, to see their imports)."""
    def imported(module):
        code = (f"import sys, {module}; print(sorted({{m.split('.')[0] for m in sys.modules}} "
                "& {'tensorflow_recommenders', 'tf_keras', 'keras'}))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip()

    assert imported("cfimage.stage1.embedding_files") == "[]"
    # `import tensorflow` loads tf_keras itself (TF_USE_LEGACY_KERAS=1); TFRS stays out.
    assert imported("cfimage.stage1.pipeline") == "['tf_keras']"
