"""Property-based tests (hypothesis) of the parsers that read what users send: the catalogue
CSVs, the image decoder, and the exported serving signature."""

import csv
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cfimage.catalogue import reader as catalogue_lib
from cfimage.stage2 import data
from cfimage.catalogue import demo
from cfimage.serving import export
from cfimage.stage2 import model as model_lib

# Modest example counts keep the file under a minute on 2 CPU cores; search harder with
# e.g. CFIMAGE_HYPOTHESIS_SCALE=20.
SCALE = int(os.environ.get("CFIMAGE_HYPOTHESIS_SCALE", "1"))
FEW = settings(max_examples=60 * SCALE, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SOME = settings(max_examples=25 * SCALE, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# --- The catalogue parser -----------------------------------------------------------------

ITEM_HEADERS = [["item_id", "image", "labels"], ["labels", "item_id", "image"],
                ["item_id", "image"], ["item_id", "image", "labels", "extra"],
                ["item_id", "image", "labels", "labels"], ["item_id", " image ", "labels"]]
INTERACTION_HEADERS = [["user_id", "item_id"], ["user_id", "item_id", "weight"],
                       ["item_id", "user_id", "weight", "timestamp"], ["user", "item_id"]]
# Values that mean something to the parser, and characters that trip CSV readers.
FIELDS = st.one_of(
    st.sampled_from(["a", "b", "c", " a ", "", "images/a.png", "images/b.png", "missing.png",
                     "images", "x|y", "x| |", "|", "u1", "u2", "1", "2.5", "-1", "0", "nan",
                     "inf", "1e999", "NaN", "17", "yesterday"]),
    st.text(alphabet='ab|, "\n\r\t\x00\ufeffé\u2028', max_size=5))


def _csv_text(rows, quoting):
    buffer = io.StringIO()
    # "\r\n" (the default): the writer then quotes values that contain \r or \n.
    csv.writer(buffer, quoting=quoting).writerows(rows)
    return buffer.getvalue()


def _csv_file(headers):
    """A CSV file as bytes: well-formed rows of any width, hand-joined text, or noise."""
    rows = st.lists(st.lists(FIELDS, min_size=0, max_size=5), max_size=6)
    written = st.builds(lambda header, body, quoting: _csv_text([header] + body, quoting),
                        st.sampled_from(headers), rows,
                        st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    joined = st.builds(lambda header, body, end: "\n".join(
        [",".join(header)] + [",".join(row) for row in body]) + end,
        st.sampled_from(headers), rows, st.sampled_from(["", "\n", "\r\n", "\n\n"]))
    text = st.one_of(written, joined, st.text(max_size=80))
    return st.one_of(text.map(lambda t: t.encode("utf-8")), text.map(
        lambda t: t.encode("utf-8") + b"\xff"), st.binary(max_size=80))


@pytest.fixture(scope="module")
def catalogue_dir(tmp_path_factory):
    """One directory with two images; each example rewrites its two CSV files."""
    root = tmp_path_factory.mktemp("catalogue")
    os.makedirs(root / "images")
    for name in ("a.png", "b.png"):
        demo.write_png(str(root / "images" / name), np.full((4, 4, 3), 7, np.uint8))
    return root


def _check_consistent(catalogue):
    n = catalogue.num_items
    assert n >= 1 and catalogue.item_ids.shape == catalogue.image_paths.shape == (n,)
    assert len(set(catalogue.item_ids)) == n
    assert all(i and i == i.strip() for i in catalogue.item_ids)
    assert all(os.path.isfile(p) for p in catalogue.image_paths)
    assert catalogue.labels.shape == (n, catalogue.num_classes) and catalogue.num_classes >= 1
    assert set(np.unique(catalogue.labels)) <= {0.0, 1.0}
    np.testing.assert_array_equal(catalogue.labelled, catalogue.labels.sum(axis=1) > 0)
    assert catalogue.labelled.any()
    names = catalogue.label_names
    assert names == sorted(set(names)) and all(s and s == s.strip() and "|" not in s
                                               for s in names)
    assert (catalogue.labels.sum(axis=0) > 0).all()  # every label is carried by some item
    interactions = catalogue.interactions
    assert len(interactions) >= 1
    assert set(interactions.item_id) <= set(catalogue.item_ids)  # default policy: fail
    assert (interactions.user_id.str.strip() == interactions.user_id).all()
    assert (interactions.user_id != "").all()
    weight = interactions.weight.to_numpy()
    assert np.isfinite(weight).all() and (weight > 0).all()


@FEW
@given(items=_csv_file(ITEM_HEADERS), interactions=_csv_file(INTERACTION_HEADERS))
def test_any_csv_loads_consistently_or_fails_naming_its_file(
        catalogue_dir, items, interactions):
    (catalogue_dir / "items.csv").write_bytes(items)
    (catalogue_dir / "interactions.csv").write_bytes(interactions)
    try:
        catalogue = catalogue_lib.load_catalogue(str(catalogue_dir))
    except catalogue_lib.CatalogueError as error:
        message = str(error)
        assert any(str(catalogue_dir / name) in message
                   for name in ("items.csv", "interactions.csv")), message
        return
    _check_consistent(catalogue)


def _clean(text):
    return text == text.strip() and "\x00" not in text


IDS = st.text(min_size=1, max_size=8).filter(_clean)
LABELS = st.text(min_size=1, max_size=6).filter(lambda t: _clean(t) and "|" not in t)


@FEW
@given(items=st.dictionaries(IDS, st.tuples(st.sampled_from(["images/a.png", "images/b.png"]),
                                            st.sets(LABELS, max_size=3)),
                             min_size=1, max_size=8),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
def test_a_valid_catalogue_round_trips(catalogue_dir, items, quoting):
    assume(any(labels for _, labels in items.values()))
    rows = [["item_id", "image", "labels"]] + [[item_id, image, "|".join(sorted(labels))]
                                               for item_id, (image, labels) in items.items()]
    (catalogue_dir / "items.csv").write_text(_csv_text(rows, quoting), encoding="utf-8")
    interactions = [["user_id", "item_id"]] + [[f"user {i}", item_id]
                                               for i, item_id in enumerate(items)]
    (catalogue_dir / "interactions.csv").write_text(_csv_text(interactions, quoting),
                                                    encoding="utf-8")
    catalogue = catalogue_lib.load_catalogue(str(catalogue_dir))
    _check_consistent(catalogue)
    assert catalogue.item_ids.tolist() == list(items)
    assert catalogue.label_names == sorted(set().union(*(l for _, l in items.values())))
    for row, (image, labels) in enumerate(items.values()):
        assert catalogue.image_paths[row] == str(catalogue_dir / image)
        assert {catalogue.label_names[c] for c in np.flatnonzero(catalogue.labels[row])} == \
            labels
    assert catalogue.interactions.item_id.tolist() == list(items)


# --- The image decoder ------------------------------------------------------------------------

MAGIC = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a", b"BM",
         b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"]


@FEW
@given(prefix=st.sampled_from(MAGIC), noise=st.binary(max_size=300))
def test_random_bytes_are_reported_unreadable_or_decode_to_the_right_shape(
        tmp_path_factory, prefix, noise):
    encoded = prefix + noise
    path = tmp_path_factory.getbasetemp() / "noise.bin"
    path.write_bytes(encoded)
    bad = data.find_unreadable_images([str(path)])
    try:
        image = data.decode_and_resize(encoded, (16, 12))
    except tf.errors.InvalidArgumentError:
        assert list(bad) == [0] and bad[0]  # the check found it first, with a reason
        return
    if not bad:  # noise that happens to be an image
        assert image.shape == (16, 12, 3) and image.dtype == tf.uint8


def _encode(pixels, kind):
    if kind == "png":
        return tf.io.encode_png(pixels).numpy()
    return tf.io.encode_jpeg(pixels).numpy()


@st.composite
def valid_images(draw):
    kind = draw(st.sampled_from(["png", "jpeg"]))
    channels = draw(st.sampled_from([1, 3, 4] if kind == "png" else [1, 3]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16] if kind == "png" else [np.uint8]))
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2 ** 16))
    shape = (height, width, channels)
    pixels = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype)
    return _encode(pixels, kind), pixels


@FEW
@given(image=valid_images(), size=st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_valid_images_of_any_size_channels_and_depth_decode_to_rgb(
        tmp_path_factory, image, size):
    encoded, pixels = image
    decoded = data.decode_and_resize(encoded, size).numpy()
    assert decoded.shape == (*size, 3) and decoded.dtype == np.uint8
    path = tmp_path_factory.getbasetemp() / "valid.img"
    path.write_bytes(encoded)
    assert data.find_unreadable_images([str(path)]) == {}
    assert data.image_dimensions(encoded) == pixels.shape[:2]


@FEW
@given(image=valid_images(), cut=st.floats(0.0, 0.9))
def test_truncated_images_are_reported_or_decode_to_the_right_shape(
        tmp_path_factory, image, cut):
    encoded, _ = image
    truncated = encoded[:int(len(encoded) * cut)]
    path = tmp_path_factory.getbasetemp() / "truncated.img"
    path.write_bytes(truncated)
    bad = data.find_unreadable_images([str(path)])
    if not bad:  # e.g. a JPEG cut inside trailing metadata still decodes
        assert data.decode_and_resize(truncated, (8, 8)).shape == (8, 8, 3)


# --- The serving signature --------------------------------------------------------------------

SIZE = (32, 32)


@pytest.fixture(scope="module")
def serving_default(tmp_path_factory):
    """The serving_default signature of a real export (untrained EfficientNet-B0), loaded
    the way a server loads it."""
    model = model_lib.build_model("efficientnet_b0", "none", SIZE, 3, True, 4)
    path = export.export_saved_model(model, ["x", "y", "z"], SIZE,
                                     str(tmp_path_factory.mktemp("saved")), "p",
                                     log=lambda message: None)
    loaded = tf.saved_model.load(path)
    return loaded, loaded.signatures["serving_default"]


GOOD = tf.io.encode_jpeg(np.full((20, 28, 3), 128, np.uint8)).numpy()


@pytest.mark.slow  # its fixture exports a whole SavedModel: about a minute here
@SOME
@given(batch=st.lists(st.builds(lambda prefix, noise: prefix + noise, st.sampled_from(MAGIC),
                                st.binary(max_size=200)), min_size=1, max_size=3))
def test_random_bytes_to_the_serving_signature_fail_cleanly_and_serving_goes_on(
        serving_default, batch):
    _, serve = serving_default
    try:
        out = serve(images=tf.constant(batch))
        assert out["scores"].shape == (len(batch), 3)  # noise that happens to be an image
    except tf.errors.InvalidArgumentError as error:
        assert error.message
    out = serve(images=tf.constant([GOOD]))
    scores = out["scores"].numpy()
    assert scores.shape == (1, 3) and np.isfinite(scores).all()
