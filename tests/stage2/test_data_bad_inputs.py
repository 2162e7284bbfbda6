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


# --- EXIF orientation -----------------------------------------------------------------------

def upright_scene(height=24, width=40):
    """A picture with a clear top, bottom, left and right."""
    scene = np.zeros((height, width, 3), np.uint8)
    scene[:height // 2, :width // 2, 0] = 255  # red top-left
    scene[height // 2:, 3 * width // 4:, 2] = 255  # blue bottom-right
    scene[:, :, 1] = np.linspace(0, 255, width).astype(np.uint8)[None]  # green grows rightwards
    return scene


# How a camera stores the upright scene for each tag (the inverse of what the tag says to do).
STORED = {1: lambda s: s, 3: lambda s: np.rot90(s, 2), 6: lambda s: np.rot90(s, 1),
          8: lambda s: np.rot90(s, 3), 2: lambda s: s[:, ::-1], 4: lambda s: s[::-1],
          5: lambda s: np.transpose(s, (1, 0, 2)), 7: lambda s: np.rot90(s, 2).transpose(1, 0, 2)}


def tagged_jpeg(orientation, scene=None):
    """A real JPEG written by Pillow as a camera writes one: the pixels as the sensor saw
    them, and an EXIF orientation tag that says how to turn them upright."""
    scene = upright_scene() if scene is None else scene
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(STORED[orientation](scene))).save(
        buffer, format="JPEG", quality=95, exif=_exif(orientation))
    return buffer.getvalue()


def _mean_difference(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_is_turned_upright_as_its_exif_orientation_says(orientation):
    from PIL import ImageOps
    scene = upright_scene()
    encoded = tagged_jpeg(orientation)
    assert int(data.exif_orientation(tf.constant(encoded))) == orientation
    with Image.open(io.BytesIO(encoded)) as image:
        pillow = np.asarray(ImageOps.exif_transpose(image))
    np.testing.assert_array_equal(pillow.shape, scene.shape)  # Pillow agrees on upright
    eager = data.decode_and_resize(tf.constant(encoded), scene.shape[:2]).numpy()
    graph = tf.function(lambda b: data.decode_and_resize(b, scene.shape[:2]))(
        tf.constant(encoded)).numpy()
    for image in (eager, graph):
        assert _mean_difference(image, pillow) < 2  # the two JPEG decoders differ slightly
        assert _mean_difference(image, scene) < 4
    # Decoded as stored (orientation ignored), the picture is far from the scene.
    stored = tf.io.decode_jpeg(encoded).numpy()
    if orientation != 1:
        assert stored.shape != scene.shape or _mean_difference(stored, scene) > 20


def _jpeg_with_app1(orientation, byte_order):
    """A JPEG from TensorFlow's encoder (JFIF APP0 first), with an APP1 Exif segment of the
    given byte order inserted after it: the marker walk and both TIFF byte orders."""
    jpeg = tf.io.encode_jpeg(np.ascontiguousarray(np.rot90(upright_scene(), 1))).numpy()
    assert jpeg[2:4] == b"\xff\xe0"  # APP0 (JFIF)
    after_app0 = 4 + int.from_bytes(jpeg[4:6], "big")
    endian = "little" if byte_order == b"II" else "big"
    entry = ((0x0112).to_bytes(2, endian) + (3).to_bytes(2, endian) + (1).to_bytes(4, endian)
             + orientation.to_bytes(2, endian) + b"\x00\x00")
    tiff = (byte_order + (42).to_bytes(2, endian) + (8).to_bytes(4, endian)
            + (1).to_bytes(2, endian) + entry + (0).to_bytes(4, endian))
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:after_app0] + app1 + jpeg[after_app0:]


@pytest.mark.parametrize("byte_order", [b"II", b"MM"])
def test_the_exif_tag_is_found_after_other_segments_in_either_byte_order(byte_order):
    encoded = _jpeg_with_app1(6, byte_order)
    assert int(data.exif_orientation(tf.constant(encoded))) == 6
    image = data.decode_and_resize(tf.constant(encoded), (24, 40)).numpy()
    assert _mean_difference(image, upright_scene()) < 4


@pytest.mark.parametrize("encoded", [
    b"", b"\xff\xd8\xff", b"not a jpeg", b"\xff\xd8\xff\xe1\x00\x08Exif\x00\x00",
    b"\xff\xd8\xff\xe1\xff\xff" + b"\xff" * 100,
])
def test_no_or_broken_exif_means_upright(encoded):
    assert int(data.exif_orientation(tf.constant(encoded))) == 1


def test_tfrecord_shards_hold_the_upright_image(tmp_path):
    from cfimage.stage2 import tfrecords
    (tmp_path / "phone.jpg").write_bytes(tagged_jpeg(6))
    targets = data.pack_targets(np.ones((1, 1), np.float32), np.ones(1, bool),
                                np.zeros((1, 1), np.float32), np.zeros(1, np.float32))
    tfrecords.write_tfrecords(str(tmp_path / "shards"), ["phone"], [str(tmp_path / "phone.jpg")],
                              targets, (24, 40), ["x"], num_shards=1, log=lambda m: None)
    dataset = tfrecords.make_dataset(str(tmp_path / "shards" / "items-*"), (24, 40), 1,
                                     training=False)
    stored = next(iter(dataset))[0][0].numpy().astype(np.uint8)
    assert _mean_difference(stored, upright_scene()) < 4
    # The in-memory training pipeline gives the same pixels.
    in_memory = next(iter(data.make_dataset([str(tmp_path / "phone.jpg")], targets, (24, 40), 1,
                                            training=False)))[0][0].numpy().astype(np.uint8)
    np.testing.assert_array_equal(in_memory, stored)
