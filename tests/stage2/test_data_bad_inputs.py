"""Bad images through the one decode function (data.decode_and_resize) and the image check
(data.find_unreadable_images): decompression bombs of every format the decoder reads, and
EXIF orientation. The serving side of the same cases: tests/serving/test_export_bad_inputs.py."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cfimage.stage2 import data

FORMATS = ["png", "gif", "bmp", "webp_lossy", "webp_lossless", "webp_extended",
           "jpeg"]


def encode(kind, pixels):
    """`pixels` (H, W, 3) uint8 encoded as `kind` (one of FORMATS) by Pillow."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if kind == "gif":
        image.convert("P").save(buffer, format="GIF")
    elif kind.startswith("webp"):
        options = {"webp_lossy": {}, "webp_lossless": {"lossless": True},
                   "webp_extended": {"exif": _exif(1)}}[kind]
        image.save(buffer, format="WEBP", **options)
    else:
        image.save(buffer, format=kind.upper())
    return buffer.getvalue()


def _exif(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def claim_size(kind, encoded, height, width):
    """A copy of an encoded image whose header claims height x width pixels (the body
    is left as it is: a "decompression bomb" header)."""
    out = bytearray(encoded)
    if kind == "png":
        out[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    elif kind == "gif":
        out[6:10] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    elif kind == "bmp":
        out[18:26] = width.to_bytes(4, "little") + height.to_bytes(4, "little")
    elif kind == "webp_lossy":
        out[26:30] = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    elif kind == "webp_lossless":
        bits = int.from_bytes(out[21:25], "little") & ~((1 << 28) - 1)
        out[21:25] = (bits | (width - 1) | (height - 1) << 14).to_bytes(4, "little")
    elif kind == "webp_extended":
        out[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif kind == "jpeg":
        sof = out.index(b"\xff\xc0")
        out[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(out)


# The largest side each header can claim, and a size over the pixel limit within it.
BOMB = {"png": (100_000, 100_000), "gif": (65_535, 65_535), "bmp": (100_000, 100_000),
        "webp_lossy": (16_383, 16_383),
        "webp_lossless": (16_384, 16_384), "webp_extended": (1_000_000, 1_000_000),
        "jpeg": (60_000, 60_000)}  # libjpeg: sides <= 65,500


def _pixels(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


@pytest.mark.parametrize("kind", FORMATS)
def test_the_header_size_of_every_format_is_read_without_decoding(kind):
    encoded = encode(kind, _pixels(6, 10))
    assert data.header_size(tf.constant(encoded)).numpy().tolist() == [6, 10]
    assert data.header_size(tf.constant(claim_size(kind, encoded, *BOMB[kind]))).numpy() \
        .tolist() == list(BOMB[kind])
    assert data.header_size(tf.constant(b"not an image")).numpy().tolist() == [0, 0]
    assert data.header_size(tf.constant(b"")).numpy().tolist() == [0, 0]


@pytest.mark.parametrize("kind", FORMATS)
def test_a_bomb_header_of_every_format_is_refused_before_decoding(tmp_path, kind):
    bomb = claim_size(kind, encode(kind, _pixels(6, 10)), *BOMB[kind])
    # The one decode function (training's tf.data map, TFRecord writing, serving), in a graph
    # and eagerly: InvalidArgument with the reason, before the decoder allocates anything.
    decode = tf.function(lambda b: data.decode_and_resize(b, (32, 32)))
    for run in (decode, lambda b: data.decode_and_resize(b, (32, 32))):
        with pytest.raises(tf.errors.InvalidArgumentError, match="image too large: its header "
                           "claims more than 178,956,970 pixels"):
            run(tf.constant(bomb))
    # The check of every image before training names the size.
    (tmp_path / "bomb").write_bytes(bomb)
    (tmp_path / "fine").write_bytes(encode(kind, _pixels(6, 10)))
    bad = data.find_unreadable_images([str(tmp_path / "bomb"), str(tmp_path / "fine")])
    height, width = BOMB[kind]
    assert list(bad) == [0]
    assert bad[0].startswith(f"image too large: {height}x{width} pixels, more than "
                             "178,956,970"), bad


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_decodes_to_rgb_at_the_training_size(kind):
    pixels = np.zeros((6, 10, 3), np.uint8)
    pixels[:, 5:] = 255
    image = data.decode_and_resize(tf.constant(encode(kind, pixels)), (6, 10)).numpy()
    assert image.shape == (6, 10, 3)
    assert image[:, :4].max() < 30 and image[:, 6:].min() > 225, kind


def test_a_tfrecord_writer_names_the_item_whose_image_is_a_bomb(tmp_path):
    from cfimage.errors import UserError
    from cfimage.stage2 import tfrecords
    fine = encode("png", _pixels(6, 10))
    (tmp_path / "a.png").write_bytes(fine)
    (tmp_path / "b.webp").write_bytes(claim_size("webp_lossy", encode("webp_lossy",
                                                                      _pixels(6, 10)),
                                                 16_383, 16_383))
    targets = data.pack_targets(np.ones((2, 1), np.float32), np.ones(2, bool),
                                np.zeros((2, 1), np.float32), np.zeros(2, np.float32))
    with pytest.raises(UserError, match=r"b.webp \(item 'sku-1'\): cannot be written to the "
                       "TFRecord shards: image too large"):
        tfrecords.write_tfrecords(str(tmp_path / "shards"), ["sku-0", "sku-1"],
                                  [str(tmp_path / "a.png"), str(tmp_path / "b.webp")],
                                  targets, (32, 32), ["x"], num_shards=1, log=lambda m: None)
