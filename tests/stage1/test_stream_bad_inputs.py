"""Streamed stage 1 applies the in-memory reader's CSV rules (cfimage/stage1/scan.py,
stream.py): what its scan accepts, its tf.data reader reads alike; what it cannot read is
refused by the scan in one line naming the file and line, never a TensorFlow traceback."""

import numpy as np
import pytest

from cfimage.catalogue import reader
from cfimage.stage1 import scan
from cfimage.stage1.two_tower import TwoTowerConfig

ITEMS = ["a", "b", "c"]


def _scan(tmp_path, text):
    path = tmp_path / "interactions.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path), lambda: scan.scan_interactions(
        [str(path)], reader.CatalogueSpec(), ITEMS, TwoTowerConfig(holdout_fraction=0.0),
        log=lambda m: None)


@pytest.mark.parametrize("text, line, message", [
    ('user_id,item_id\nu1,a\n"u\n2",b\nu3,c\n', 3, "a line break inside a quoted value 'u\\n2'"),
    ('user_id,item_id\nu1,a\nu"2,b\n', 3, "a quote character inside the value 'u\"2'"),
    ('user_id,item_id\nu1,a\n"u ""2""",b\n', 3, "a quote character inside the value 'u \"2\"'"),
    ('user_id,item_id\ru1,a\ru2,b\r', 1, "a carriage return (\\r) alone as a line break"),
    ('user_id,"item\nid"\nu1,a\n', 1, "a line break inside a quoted value 'item\\nid'"),
])
def test_what_the_streaming_reader_cannot_read_is_refused_by_the_scan(tmp_path, text, line,
                                                                      message):
    path, run = _scan(tmp_path, text)
    with pytest.raises(reader.CatalogueError) as error:
        run()
    text = str(error.value)
    assert text.startswith(f"{path}, line {line}: {message}"), text
    assert "--stream_interactions=false" in text and "\n" not in text


@pytest.mark.parametrize("text, message", [
    ('user_id,item_id\nu1,a\n"u2"x,b\n', "line 3: malformed CSV"),
    (b"user_id,item_id\nu1,a\ncaf\xe9,b\n", "line 3: not valid UTF-8"),
    ("user_id,item_id\nu1,a\nu2,b,extra\n", "line 3: 3 field(s)"),
])
def test_malformed_rows_give_the_in_memory_readers_one_line_errors(tmp_path, text, message):
    path, run = _scan(tmp_path, text)
    with pytest.raises(reader.CatalogueError) as error:
        run()
    assert str(error.value).startswith(f"{path}, {message}")
    # The in-memory reader says the same.
    with pytest.raises(reader.CatalogueError) as in_memory:
        next(reader.read_csv_chunks(path, "interactions"))
    assert str(in_memory.value).startswith(f"{path}, {message}")


def test_what_the_scan_accepts_the_streaming_reader_reads_alike(tmp_path):
    from cfimage.stage1 import stream
    text = ('\ufeffuser_id,item_id,weight\r\n"u,1",a,2\r\n\r\n  u2 ,"b",1\r\n"u,1", c ,3\r\n')
    path, run = _scan(tmp_path, text)
    summary = run()
    assert summary.users.tolist() == ["u,1", "u2"] and summary.n_rows == 3
    config = TwoTowerConfig(holdout_fraction=0.0, batch_size=8)
    rows = [batch for batch in stream.make_dataset(summary, "full", config)]
    users = np.concatenate([b["user"].numpy() for b in rows])
    items = np.concatenate([b["item"].numpy() for b in rows])
    pairs = sorted(zip(summary.users[users].tolist(), summary.items[items].tolist()))
    assert pairs == [("u,1", "a"), ("u,1", "c"), ("u2", "b")]
