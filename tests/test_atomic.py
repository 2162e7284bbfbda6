"""cfimage/atomic.py: a file under its final name is always complete."""

import os

import pytest

from cfimage import atomic


def test_write_text_and_json_leave_only_the_file(tmp_path):
    atomic.write_text(str(tmp_path / "flags.txt"), "--epochs=3\n")
    atomic.write_json(str(tmp_path / "metrics.json"), {"map": 0.5})
    assert (tmp_path / "flags.txt").read_text() == "--epochs=3\n"
    assert (tmp_path / "metrics.json").read_text() == '{\n  "map": 0.5\n}'
    assert sorted(os.listdir(tmp_path)) == ["flags.txt", "metrics.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = str(tmp_path / "items.csv")
    atomic.write_text(path, "complete\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic.replacing(path) as temporary:
            with open(temporary, "w") as f:
                f.write("half")
            raise RuntimeError("killed while writing")
    assert open(path).read() == "complete\n"
    assert os.listdir(tmp_path) == ["items.csv"]


def test_temporary_names_are_beside_the_file_unique_and_keep_the_suffix(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    with atomic.replacing(path, suffix=".weights.h5") as first, \
            atomic.replacing(path, suffix=".weights.h5") as second:
        for temporary in (first, second):
            assert os.path.dirname(temporary) == str(tmp_path)
            assert temporary.endswith(".weights.h5") and temporary != path
            open(temporary, "w").close()
        assert first != second  # two writers of one file never share a temporary
    assert os.listdir(tmp_path) == ["best.weights.h5"]


def test_remote_paths_go_through_gfile():
    tf = pytest.importorskip("tensorflow")
    path = "ram://atomic_test/shard-0.tfrecord"
    tf.io.gfile.makedirs("ram://atomic_test")
    with atomic.replacing(path) as temporary, tf.io.TFRecordWriter(temporary) as writer:
        writer.write(b"record")
    assert list(tf.data.TFRecordDataset(path).as_numpy_iterator()) == [b"record"]
    assert tf.io.gfile.listdir("ram://atomic_test") == ["shard-0.tfrecord"]
