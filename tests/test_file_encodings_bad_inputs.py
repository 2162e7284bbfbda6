"""Every file cfimage reads, fed in a wrong encoding (Latin-1, UTF-16) or as something that is
not a file: the message names the file (items, interactions, streamed interactions, CF vectors
.csv and .npz, flagfiles)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from cfimage import train_flags
from cfimage.catalogue import reader
from cfimage.errors import UserError
from cfimage.stage1 import embedding_files, scan
from cfimage.stage1.two_tower import TwoTowerConfig
from tests.conftest import write_catalogue

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

ITEMS = "item_id,image,labels\ncafé,images/a.png,x\nb,images/b.png,y\nc,images/c.png,x\n"
INTERACTIONS = "user_id,item_id\nu1,café\nu2,b\nu3,c\n"
ENCODINGS = {"latin-1": "not valid UTF-8 (byte b'\\xe9'",
             "utf-16": "a UTF-16 byte-order mark (FF FE); this file is UTF-16 text. Save it as "
                       "UTF-8.",
             "utf-16-le": "a NUL character (\\x00); this is not a text"}  # no byte-order mark


def _catalogue(tmp_path, items=ITEMS, interactions=INTERACTIONS, encoding="utf-8"):
    root = write_catalogue(tmp_path, "", "", ["images/a.png", "images/b.png", "images/c.png"])
    (tmp_path / "items.csv").write_bytes(items.encode(encoding))
    (tmp_path / "interactions.csv").write_bytes(interactions.encode(encoding))
    return root


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", ["items.csv", "interactions.csv"])
def test_catalogue_files_in_another_encoding_name_the_file(tmp_path, encoding, name):
    root = _catalogue(tmp_path)
    path = tmp_path / name
    path.write_bytes(path.read_bytes().decode("utf-8").encode(encoding))
    with pytest.raises(reader.CatalogueError) as error:
        reader.load_catalogue(root)
    assert str(error.value).startswith(f"{path}, line "), str(error.value)
    assert ENCODINGS[encoding] in str(error.value)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_streamed_interactions_file_in_another_encoding_names_the_file(tmp_path, encoding):
    path = tmp_path / "interactions.csv"
    path.write_bytes(INTERACTIONS.encode(encoding))
    with pytest.raises(reader.CatalogueError) as error:
        scan.scan_interactions([str(path)], reader.CatalogueSpec(), ["café", "b", "c"],
                               TwoTowerConfig(), log=lambda m: None)
    assert str(error.value).startswith(f"{path}, line ") and ENCODINGS[encoding] in \
        str(error.value)


def test_a_catalogue_file_that_is_a_directory_says_so(tmp_path):
    root = _catalogue(tmp_path)
    os.remove(tmp_path / "items.csv")
    os.mkdir(tmp_path / "items.csv")
    with pytest.raises(reader.CatalogueError, match=f"items file {tmp_path}/items.csv is a "
                       "directory, not a CSV file"):
        reader.load_catalogue(root)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_vectors_csv_in_another_encoding_names_the_file(tmp_path, encoding):
    path = tmp_path / "vectors.csv"
    path.write_bytes("item_id,v0,v1\ncafé,1,2\nb,3,4\n".encode(encoding))
    with pytest.raises(ValueError) as error:
        embedding_files.load_embeddings(path)
    assert str(error.value).startswith(f"{path}, line ") and ENCODINGS[encoding] in \
        str(error.value)


def test_vectors_npz_ids_that_are_not_utf8_name_the_file_and_row(tmp_path):
    path = tmp_path / "vectors.npz"
    np.savez(path, ids=np.array(["b".encode(), "café".encode("latin-1")]),
             vectors=np.ones((2, 2)))
    with pytest.raises(ValueError) as error:
        embedding_files.load_embeddings(path)
    assert str(error.value) == (f"{path}: row 1: item id b'caf\\xe9' is not valid UTF-8 (byte "
                                "b'\\xe9'); store the ids as UTF-8 text.")
    np.savez(path, ids=np.array(["b".encode(), "café".encode()]), vectors=np.ones((2, 2)))
    assert embedding_files.load_embeddings(path)[0].tolist() == ["b", "café"]


def test_malformed_quoting_in_a_vectors_csv_names_the_file(tmp_path):
    path = tmp_path / "vectors.csv"
    path.write_text('item_id,v0\n"a"b,1\n')
    with pytest.raises(ValueError, match=f"{path}: malformed CSV"):
        embedding_files.load_embeddings(path)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_flagfile_in_another_encoding_names_the_file(tmp_path, encoding):
    inner = tmp_path / "inner.cfg"
    inner.write_bytes("--epochs=2\n--model_name=café\n".encode(encoding))
    outer = tmp_path / "outer.cfg"
    outer.write_text(f"--threads=1\n--flagfile={inner}\n")
    for argv in ([f"--flagfile={inner}"], [f"--flagfile={outer}"]):  # also when nested
        with pytest.raises(UserError) as error:
            train_flags.check_flagfiles(["cfimage.train", *argv])
        assert str(error.value).startswith(f"flagfile {inner}, line ") and \
            ENCODINGS[encoding] in str(error.value)
        assert "CSV" not in str(error.value)
        with pytest.raises(SystemExit) as exit_:
            train_flags.parse_flags(["cfimage.train", *argv])
        assert str(exit_.value.code).startswith(f"cfimage: error: flagfile {inner}, line ")
    train_flags.check_flagfiles(["cfimage.train", "--flagfile=/no/such/file"])  # absl's to say


def test_a_vectors_csv_with_a_utf8_byte_order_mark_is_accepted_like_items_csv(tmp_path):
    path = tmp_path / "vectors.csv"
    path.write_bytes(b"\xef\xbb\xbfitem_id,v0,v1\r\nsku-0,1,2\r\nsku-1,3,4\r\n")
    ids, vectors = embedding_files.load_embeddings(path)
    assert ids.tolist() == ["sku-0", "sku-1"] and vectors.tolist() == [[1, 2], [3, 4]]


def test_messages_show_ids_as_text_not_numpy_reprs():
    ids = np.array(["sku-0", "sku-1"])
    with pytest.raises(ValueError) as error:
        embedding_files.align_embeddings(np.array(["x-0", "x-1"]), ids, np.ones((2, 2)),
                                         "v.csv", log=lambda m: None)
    assert "file ids look like ['sku-0', 'sku-1'], catalogue ids like ['x-0', 'x-1']" in \
        str(error.value)
    assert "np.str_" not in str(error.value)


@pytest.mark.slow  # starts a Python process per entry point
@pytest.mark.parametrize("module", ["cfimage.diagnose", "cfimage.experiment"])
def test_every_entry_point_names_a_flagfile_in_another_encoding(tmp_path, module):
    flagfile = tmp_path / "latin1.cfg"
    flagfile.write_bytes("--workdir=caf\xe9\n".encode("latin-1"))
    result = subprocess.run([sys.executable, "-m", module, f"--flagfile={flagfile}"],
                            capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"cfimage: error: flagfile {flagfile}, line ")
