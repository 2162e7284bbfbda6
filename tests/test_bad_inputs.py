"""Bad inputs of docs/bad_inputs.md that no other test file covers: each fails with one
message naming the file, the line and the value, or is handled and reported."""

import ast
import io
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf

from cfimage.catalogue import reader as catalogue_lib
from cfimage.stage1 import embedding_files
from cfimage.stage2 import data
from tests.conftest import write_catalogue

ROOT = os.path.join(os.path.dirname(__file__), "..")
IMAGES = ("images/a.png", "images/b.png", "images/c.png")
ITEMS = "item_id,image,labels\na,images/a.png,cat|dog\nb,images/b.png,dog\nc,images/c.png,\n"
INTERACTIONS = "user_id,item_id,weight\nu1,a,5\nu1,b,3\nu2,a,1\n"


def _load(tmp_path, items=ITEMS, interactions=INTERACTIONS, **spec):
    root = write_catalogue(tmp_path, items, interactions, IMAGES)
    return catalogue_lib.load_catalogue(root, catalogue_lib.CatalogueSpec(**spec))


def _fails(tmp_path, message, items=ITEMS, interactions=INTERACTIONS, file="items.csv",
           **spec):
    with pytest.raises(catalogue_lib.CatalogueError) as error:
        _load(tmp_path, items, interactions, **spec)
    text = str(error.value)
    assert message in text, text
    assert os.path.join(str(tmp_path), file) in text  # names the file
    return text


# --- Catalogue: CSV structure -------------------------------------------------------------

def test_duplicate_item_id_names_both_lines(tmp_path):
    _fails(tmp_path, "line 4: duplicate item id 'a' (first at line 2; 1 duplicate row(s)",
           items="item_id,image,labels\na,images/a.png,x\nb,images/b.png,y\n a ,images/c.png,y\n")


@pytest.mark.parametrize("items, message", [
    ("item_id,image,labels\na,images/a.png\nb,images/b.png,x\n",
     "line 2: 2 field(s) ['a', 'images/a.png'], but the header has 3"),
    ("item_id,image,labels\na,images/a.png,x,surplus\n",
     "line 2: 4 field(s) ['a', 'images/a.png', 'x', 'surplus'], but the header has 3"),
    ("item_id,image,labels,labels\na,images/a.png,x,y\n",
     "line 1: duplicate column name 'labels'"),
    ("item_id,,labels\na,images/a.png,x\n", "line 1: empty column name ''"),
    ("", "empty file or empty header line"),
    ("item_id,image,labels\n\n", "no rows"),
])
def test_wrong_columns_and_field_counts_fail_with_the_line(tmp_path, items, message):
    _fails(tmp_path, message, items=items)


def test_row_lines_are_file_lines_after_blank_lines_and_quoted_line_breaks(tmp_path):
    items = ('item_id,image,labels\n\na,images/a.png,"x\ny"\n\n'
             "b,images/b.png,x\nb,images/c.png,x\n")
    _fails(tmp_path, "line 7: duplicate item id 'b' (first at line 6", items=items)


@pytest.mark.parametrize("items, line", [
    ('item_id,image,labels\na,"images/a.png,x\nb,images/b.png,y\n', 2),  # never closed
    ('item_id,image,labels\na,images/a.png,x\nb,"images/b.png"y,z\n', 3),  # text after it
])
def test_bad_quoting_fails_with_the_line_and_how_to_quote(tmp_path, items, line):
    text = _fails(tmp_path, f"line {line}: malformed CSV", items=items)
    assert 'quotes inside it doubled ("")' in text


def test_quoted_commas_and_doubled_quotes_are_values(tmp_path):
    items = 'item_id,image,labels\n"a,1",images/a.png,"say ""hi"""\nb,images/b.png,x\n'
    cat = _load(tmp_path, items, 'user_id,item_id\nu,"a,1"\n')
    assert list(cat.item_ids) == ["a,1", "b"] and cat.label_names == ['say "hi"', "x"]


@pytest.mark.parametrize("content, message", [
    (b"item_id,image,labels\na,images/a.png,x\nb,images/b.png,caf\xe9\n",
     "line 3: not valid UTF-8 (byte b'\\xe9' at offset"),
    ("item_id,image,labels\na,images/a.png,x\n".encode("utf-16"),
     "line 1: a UTF-16 byte-order mark (FF FE); this file is UTF-16 text"),
    (b"item_id,image,labels\na\x00,images/a.png,x\n", "line 2: a NUL character"),
])
def test_non_utf8_and_binary_files_fail_with_the_line(tmp_path, content, message):
    root = write_catalogue(tmp_path, ITEMS, INTERACTIONS, IMAGES)
    (tmp_path / "items.csv").write_bytes(content)
    with pytest.raises(catalogue_lib.CatalogueError, match=re.escape(message)) as error:
        catalogue_lib.load_catalogue(root)
    assert str(tmp_path / "items.csv") in str(error.value)


def test_utf8_byte_order_mark_is_accepted(tmp_path):
    cat = _load(tmp_path, items="\ufeff" + ITEMS)
    assert list(cat.item_ids) == ["a", "b", "c"]


# --- Catalogue: labels ----------------------------------------------------------------------

def test_whitespace_and_empty_labels_mean_no_label(tmp_path):
    items = ("item_id,image,labels\na,images/a.png, cat | |dog \nb,images/b.png,   \n"
             "c,images/c.png,|\n")
    cat = _load(tmp_path, items)
    assert cat.label_names == ["cat", "dog"]
    np.testing.assert_array_equal(cat.labels, [[1, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(cat.labelled, [True, False, False])


def test_only_whitespace_labels_fail(tmp_path):
    _fails(tmp_path, "no item has a label in column 'labels'",
           items="item_id,image,labels\na,images/a.png, \nb,images/b.png,|\n")


def test_labels_removed_as_rare_or_ignored_are_counted_in_the_notes(tmp_path):
    items = ("item_id,image,labels\na,images/a.png,x|rare\nb,images/b.png,x\n"
             "c,images/c.png,lonely\n")
    cat = _load(tmp_path, items, min_label_count=2)
    assert cat.label_names == ["x"]
    np.testing.assert_array_equal(cat.labelled, [True, True, False])
    assert cat.notes == ["labels with fewer than 2 items removed: ['lonely', 'rare']; "
                         "1 item(s) lost all their labels and are now unlabelled"]


@pytest.mark.parametrize("spec, message", [
    ({"label_separator": ""}, "label_separator must be a non-empty string"),
    ({"min_label_count": 0}, "min_label_count must be >= 1, not 0"),
    ({"unknown_interaction_items": "ignore"}, "unknown_interaction_items must be one of"),
])
def test_contradictory_catalogue_settings_fail_before_reading(tmp_path, spec, message):
    with pytest.raises(catalogue_lib.CatalogueError, match=re.escape(message)):
        _load(tmp_path, **spec)


# --- Catalogue: interactions ----------------------------------------------------------------

@pytest.mark.parametrize("weight", ["inf", "-inf", "NaN", "1e999", "0", "five", ""])
def test_non_finite_or_non_positive_weights_fail_with_line_and_value(tmp_path, weight):
    _fails(tmp_path, f"line 3: 'weight' is {weight!r}; weights must be finite numbers > 0",
           interactions=f"user_id,item_id,weight\nu1,a,5\nu1,b,{weight}\n",
           file="interactions.csv")


def test_every_user_id_is_a_user_and_an_empty_one_fails(tmp_path):
    # Users exist only in interactions.csv: there is no user list to be unknown to.
    cat = _load(tmp_path, interactions="user_id,item_id\nnever-seen-before,a\n 42 ,b\n")
    assert sorted(cat.interactions.user_id) == ["42", "never-seen-before"]
    _fails(tmp_path, "line 3: empty 'user_id' (1 row(s) in all)",
           interactions="user_id,item_id\nu1,a\n  ,b\n", file="interactions.csv")


def test_no_interaction_on_any_catalogue_item_fails_even_when_kept(tmp_path):
    _fails(tmp_path, "no interaction refers to an item of items.csv",
           interactions="user_id,item_id\nu1,x\n", file="interactions.csv",
           unknown_interaction_items="keep")


def test_items_without_interactions_are_kept(tmp_path):
    cat = _load(tmp_path, interactions="user_id,item_id\nu1,a\n")
    assert list(cat.item_ids) == ["a", "b", "c"]  # b and c: no vector in stage 1, masked


def test_timestamps_that_are_not_numbers_are_reported_not_dropped_silently(tmp_path):
    cat = _load(tmp_path, interactions="user_id,item_id,timestamp\nu1,a,17\nu1,b,yesterday\n"
                                       "u2,a,\n")
    assert cat.interactions.timestamp.tolist()[0] == 17
    assert cat.interactions.timestamp.isna().tolist() == [False, True, True]
    assert len(cat.notes) == 1
    assert "1 'timestamp' value(s) are not numbers (first: line 3, 'yesterday')" in cat.notes[0]


# --- Images -----------------------------------------------------------------------------------

def _pixels(height, width, channels=3, dtype=np.uint8, seed=0):
    high = 65536 if dtype == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, high, (height, width, channels), dtype)


def _png_chunk(kind, payload):
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def _png_header_only(width, height):
    """A PNG signature, a valid IHDR chunk claiming width x height, and an empty IDAT chunk:
    the headers of a PNG without its pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"")


def test_corrupt_image_body_is_unreadable(tmp_path):
    png = bytearray(tf.io.encode_png(_pixels(30, 30)).numpy())
    png[60:80] = bytes(20)  # inside the pixel data: the chunk's checksum no longer matches
    jpeg = bytearray(tf.io.encode_jpeg(_pixels(30, 30)).numpy())
    jpeg[2:6] = b"\xff\xd9\x00\x00"  # end-of-image marker where the headers should be
    paths = []
    for name, content in [("png.png", bytes(png)), ("jpeg.jpg", bytes(jpeg))]:
        (tmp_path / name).write_bytes(content)
        paths.append(str(tmp_path / name))
    bad = data.find_unreadable_images(paths)
    assert sorted(bad) == [0, 1], bad
    assert all(reason and "Op:" not in reason for reason in bad.values())


def test_missing_file_at_check_time_is_unreadable(tmp_path):
    bad = data.find_unreadable_images([str(tmp_path / "gone.png")])
    assert list(bad) == [0] and "gone.png" in bad[0]


def _cmyk_jpeg(pixels):
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_greyscale_cmyk_16bit_alpha_palette_gif_and_bmp_images_decode_to_rgb(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    rgb = _pixels(24, 36)
    grey = _pixels(24, 36, 1)
    deep = _pixels(24, 36, 3, np.uint16)
    buffers = {}
    for name, image, kind in [("palette.png", Image.fromarray(rgb).convert("P"), "PNG"),
                              ("anim.gif", Image.fromarray(rgb).convert("P"), "GIF"),
                              ("bitmap.bmp", Image.fromarray(rgb), "BMP")]:
        buffer = io.BytesIO()
        image.save(buffer, format=kind)
        buffers[name] = buffer.getvalue()
    encoded = {
        "grey.png": tf.io.encode_png(grey).numpy(),
        "grey.jpg": tf.io.encode_jpeg(grey, quality=100).numpy(),
        "cmyk.jpg": _cmyk_jpeg(rgb),
        "deep.png": tf.io.encode_png(deep).numpy(),
        "rgba.png": tf.io.encode_png(np.concatenate([rgb, _pixels(24, 36, 1, seed=1)], 2)).numpy(),
        **buffers,
    }
    paths = []
    for name, content in encoded.items():
        (tmp_path / name).write_bytes(content)
        paths.append(str(tmp_path / name))
    assert data.find_unreadable_images(paths) == {}
    decoded = {name: data.decode_and_resize(content, (24, 36)).numpy()
               for name, content in encoded.items()}
    for name, image in decoded.items():
        assert image.shape == (24, 36, 3) and image.dtype == np.uint8, name
    # Same size: no resize, so the pixel values can be checked exactly.
    np.testing.assert_array_equal(decoded["grey.png"], np.repeat(grey, 3, axis=2))
    np.testing.assert_array_equal(decoded["rgba.png"], rgb)  # alpha dropped, not blended
    # 16 bits to 8: scaled by 255/65535 (to within one step of rounding).
    assert np.abs(decoded["deep.png"].astype(int) - deep / 257).max() <= 1
    np.testing.assert_array_equal(decoded["bitmap.bmp"], rgb)
    assert np.abs(decoded["cmyk.jpg"].astype(int) - rgb).mean() < 12  # lossy, but RGB again


def test_very_large_image_is_decoded_and_downscaled():
    pixels = np.zeros((4000, 6000, 3), np.uint8)
    pixels[:, 3000:] = 255  # left half black, right half white
    image = data.decode_and_resize(tf.io.encode_jpeg(pixels, quality=90), (32, 48)).numpy()
    assert image.shape == (32, 48, 3)
    assert image[:, :20].max() < 10 and image[:, 28:].min() > 245


def test_image_claiming_more_pixels_than_the_limit_is_refused_before_decoding(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(20_000, 10_000))
    (tmp_path / "small.png").write_bytes(_png_header_only(20, 10))
    bad = data.find_unreadable_images([str(tmp_path / "bomb.png"), str(tmp_path / "small.png")])
    assert bad[0].startswith("image too large: 10000x20000 pixels, more than 178,956,970")
    assert "too large" not in bad[1]  # small but truncated: the decoder's own reason
    assert data.image_dimensions(_png_header_only(20, 10)) == (10, 20)
    jpeg = tf.io.encode_jpeg(_pixels(7, 5)).numpy()
    assert data.image_dimensions(jpeg) == (7, 5)
    from PIL import Image
    for mode, kind in [("P", "GIF"), ("RGB", "BMP")]:
        buffer = io.BytesIO()
        Image.new(mode, (640, 480)).save(buffer, format=kind)
        assert data.image_dimensions(buffer.getvalue()) == (480, 640), kind
    assert data.image_dimensions(b"not an image at all") is None


# --- CF embeddings --------------------------------------------------------------------------

def test_embeddings_for_unknown_ids_are_ignored_and_counted():
    messages = []
    ids = np.array(["a", "zz1", "zz2"])
    aligned, has_vector = embedding_files.align_embeddings(
        ["a", "b"], ids, np.ones((3, 2)), "v.csv", log=messages.append)
    np.testing.assert_array_equal(has_vector, [True, False])
    assert messages == ["v.csv: vectors for 1/2 catalogue items; 2 ids in the file are not in "
                        "the catalogue and were ignored"]
    with pytest.raises(ValueError, match="v.csv: none of the 2 catalogue items has a vector"):
        embedding_files.align_embeddings(["b", "c"], ids, np.ones((3, 2)), "v.csv",
                                         log=messages.append)


@pytest.mark.parametrize("text, message", [
    ("item_id,v0,v1\na,1,2\nb,3\n", "line 3: inconsistent dimension: 1 values, header says 2"),
    ("item_id,v0,v1\na,1,2,3\n", "line 2: inconsistent dimension: 3 values, header says 2"),
    ("item_id\na\n", "line 1: bad header"),
])
def test_embeddings_with_the_wrong_dimension_fail_with_the_line(tmp_path, text, message):
    path = tmp_path / "v.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        embedding_files.load_embeddings(path)
    assert str(error.value).startswith(str(path))


# --- Flags ------------------------------------------------------------------------------------

def _train(tmp_path, *flags):
    """`python -m cfimage.train` on the demo catalogue in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "cfimage.train", f"--workdir={tmp_path}/run", "--noexport",
         *flags], capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
        env={**os.environ, "PYTHONPATH": os.path.abspath(ROOT)})


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--epochs=0"], "--epochs and --batch_size must be >= 1."),
    (["--batch_size=0"], "--epochs and --batch_size must be >= 1."),
    (["--cf_target_scale=0"], "--cf_target_scale must be > 0."),
    (["--split=0.5,0.5"], "--split=0.5,0.5: give three fractions"),
    (["--split=0.7,0.2,0.2"], "fractions must each be > 0 and sum to 1"),
    (["--split=0.9,0.1,0"], "fractions must each be > 0 and sum to 1"),
    (["--on_bad_image=maybe"], "value should be one of <fail|skip>"),
    (["--strategy=multi_worker"], "--strategy=multi_worker needs --cf_embeddings"),
])
def test_contradictory_training_flags_fail_before_any_work(tmp_path, flags, message):
    result = _train(tmp_path, *flags)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "demo_catalogue").exists()  # stopped before the data


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--cf_dim=0"], "embedding_dim must be >= 1"),
    (["--cf_holdout=1"], "holdout_fraction must be in [0, 1)"),
    (["--cf_epochs=0"], "epochs must be >= 1"),
])
def test_out_of_range_stage1_flags_fail_before_stage1(tmp_path, flags, message):
    result = _train(tmp_path, "--demo_items=60", "--demo_users=20", *flags)
    assert result.returncode != 0
    assert "cfimage: error: stage-1 flags" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and "stage 1: two-tower" not in result.stdout


# --- The table in docs/bad_inputs.md cannot rot ------------------------------------------------

def test_every_test_named_in_the_bad_inputs_table_exists():
    with open(os.path.join(ROOT, "docs", "bad_inputs.md")) as f:
        table = f.read()
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", table)
    rows = [line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| input |", "| --- |"))]
    assert len(rows) > 30 and len(named) >= len(rows)
    for line in rows:
        assert "`tests/" in line, f"a row without a test: {line}"
    for path, name in named:
        with open(os.path.join(ROOT, path)) as f:
            tree = ast.parse(f.read())
        functions = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
        assert name in functions and name.startswith("test_"), f"{path}::{name} does not exist"
