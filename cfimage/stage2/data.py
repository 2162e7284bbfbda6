"""Input pipeline: item split, label masking, image decoding and tf.data.

`decode_and_resize` is the one preprocessing function: training, evaluation
and the exported serving signature all call it, so a served image is seen
exactly as a training image was (before augmentation).

Targets are packed so that masks travel with them (see losses.py):
  y["labels"] = [multi-hot (C), labelled flag (1)]
  y["cf"]     = [CF target (d), confidence weight (1); weight 0 = no vector]
"""

import contextlib
import io
import re
import threading

import numpy as np
import tensorflow as tf
from PIL import Image

from cfimage.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
# Images with more pixels are reported as unreadable before they are decoded: a small
# file can claim a huge size (a "decompression bomb") and decoding it would allocate
# height x width x 3 bytes, then 4x that for the resize. Pillow's limit, same reason.
MAX_IMAGE_PIXELS = 178_956_970


def decode_and_resize(image_bytes, image_size, max_pixels=MAX_IMAGE_PIXELS):
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> (H, W, 3) uint8, resized (aspect not kept).

    An image whose header claims more than `max_pixels` pixels fails with InvalidArgument
    before it is decoded (`check_header_pixels`). A JPEG is turned upright as its EXIF
    orientation tag says (`exif_orientation`), as a photo viewer shows it. Greyscale is
    expanded to RGB and alpha dropped (channels=3); animated GIFs give their first frame.
    """
    with tf.control_dependencies([check_header_pixels(image_bytes, max_pixels)]):
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    image = apply_orientation(image, exif_orientation(image_bytes))
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


_EXIF_WINDOW = 1 << 17  # the APP1 (Exif) segment is searched for in the first 128 KiB
_EXIF_MAX_SEGMENTS = 32
_EXIF_MAX_ENTRIES = 64  # entries of IFD0 looked at (cameras write about 10-20)


def exif_orientation(image_bytes):
    """The EXIF orientation tag (0x0112) of one encoded JPEG, as int32 1-8; 1 (upright) for
    other formats, a JPEG without the tag, or a value out of range. Stock TF ops only (the
    serving graph reads it too): walks the JPEG markers to the APP1 "Exif" segment, then the
    TIFF header (either byte order) and IFD0's entries."""
    window = tf.strings.join([tf.strings.substr(image_bytes, 0, _EXIF_WINDOW),
                              tf.constant(b"\x00" * _EXIF_WINDOW)])
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(window, 0, _EXIF_WINDOW), tf.uint8),
                  tf.int32)

    def at(offset):  # byte(s) at offset(s), zero past the window
        offset = tf.convert_to_tensor(offset)
        inside = (offset >= 0) & (offset < _EXIF_WINDOW)
        return tf.where(inside, tf.gather(raw, tf.clip_by_value(offset, 0, _EXIF_WINDOW - 1)),
                        0)

    def big16(offset):
        return at(offset) * 256 + at(offset + 1)

    # 1. The markers after SOI (FF D8): FF xx, then a big-endian length that counts itself.
    def more(position, tiff, step):
        return (step < _EXIF_MAX_SEGMENTS) & (tiff < 0) & tf.equal(at(position), 0xFF) & (
            position + 4 < _EXIF_WINDOW)

    def segment(position, tiff, step):
        marker = at(position + 1)
        exif = tf.equal(marker, 0xE1) & tf.reduce_all(
            tf.equal(at(position + 4 + tf.range(6)), tf.constant(list(b"Exif\x00\x00"))))
        end = tf.equal(marker, 0xDA) | tf.equal(marker, 0xD9)  # start of scan, end of image
        tiff = tf.where(exif, position + 10, tiff)
        step = tf.where(end, _EXIF_MAX_SEGMENTS, step + 1)
        fill = tf.equal(marker, 0xFF)  # fill bytes before a marker
        position = tf.where(fill, position + 1, position + 2 + big16(position + 2))
        return position, tiff, step

    _, tiff, _ = tf.while_loop(more, segment, [tf.constant(2), tf.constant(-1),
                                               tf.constant(0)])

    # 2. The TIFF header: II (little-endian) or MM (big-endian), 42, offset of IFD0.
    little = tf.equal(at(tiff), 0x49) & tf.equal(at(tiff + 1), 0x49)

    def unsigned(offset, length):
        offset = tf.convert_to_tensor(offset)
        weights = 256 ** tf.range(length)
        forward = tf.reduce_sum(at(offset[..., None] + tf.range(length)) * weights, -1)
        backward = tf.reduce_sum(at(offset[..., None] + tf.range(length)) * weights[::-1], -1)
        return tf.where(little, forward, backward)

    ifd = tiff + unsigned(tiff + 4, 4)
    entries = ifd + 2 + 12 * tf.range(_EXIF_MAX_ENTRIES)
    match = (tf.range(_EXIF_MAX_ENTRIES) < unsigned(ifd, 2)) & tf.equal(unsigned(entries, 2),
                                                                        0x0112)
    value = tf.reduce_max(tf.where(match, unsigned(entries + 8, 2), 0))
    found = tf.io.is_jpeg(image_bytes) & (tiff >= 0) & (value >= 1) & (value <= 8)
    return tf.where(found, value, 1)


def apply_orientation(image, orientation):
    """An (H, W, C) image turned upright for an EXIF `orientation` (1-8): the transform that
    PIL.ImageOps.exif_transpose applies."""
    def turned(axes):  # the transpose, then reversed along `axes`
        return lambda: tf.reverse(tf.transpose(image, [1, 0, 2]), axes)

    branches = [
        lambda: image,  # 1: upright
        lambda: tf.reverse(image, [1]),  # 2: mirrored
        lambda: tf.reverse(image, [0, 1]),  # 3: upside down
        lambda: tf.reverse(image, [0]),  # 4: mirrored upside down
        turned([]),  # 5: mirrored and turned
        turned([1]),  # 6: turned a quarter clockwise to show (a phone held upright)
        turned([0, 1]),  # 7: mirrored and turned the other way
        turned([0]),  # 8: turned a quarter anticlockwise to show
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 1, 8) - 1, branches)


def image_dimensions(encoded):
    """(height, width) that an image header claims, read by Pillow without decoding the
    pixels; None when Pillow cannot read the header (the decoder then says what is wrong)."""
    try:
        with _pillow_without_pixel_limit(), Image.open(io.BytesIO(encoded)) as image:
            width, height = image.size
    except Exception:  # any header Pillow cannot read: size unknown, as for an unknown format
        return None
    return height, width


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_without_pixel_limit():
    """Pillow refuses to open an image of more than 2 x Image.MAX_IMAGE_PIXELS pixels (the
    same number as MAX_IMAGE_PIXELS here) without saying its size; the caller compares the size
    with its own `max_pixels`, so Pillow's check is lifted while the header is read."""
    with _PILLOW_LIMIT_LOCK:
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


_HEADER_BYTES = 32  # every size field read below lies in the first 32 bytes


def header_size(image_bytes):
    """(height, width) that the header of one encoded image claims, as int64 [2], read with
    stock TF ops without decoding the pixels; (0, 0) for a format it does not know (the
    decoder then refuses it). Covers every format tf.io.decode_image reads: PNG, GIF, BMP,
    WebP (VP8, VP8L and VP8X) and JPEG (tf.io.extract_jpeg_shape reads only the markers).
    The same function checks images in training, TFRecord writing and serving."""
    # Padded with zeros, so that a short input reads as zeros, never out of range.
    padded = tf.strings.join([image_bytes, tf.constant(b"\x00" * _HEADER_BYTES)])
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8),
                  tf.int64)

    def little(start, length):
        return sum(raw[start + k] * 256**k for k in range(length))

    def big(start, length):
        return sum(raw[start + k] * 256**(length - 1 - k) for k in range(length))

    def size(height, width):
        return lambda: tf.stack([height(), width()])

    def bmp_side(start):  # signed 32-bit, as the decoder reads it (negative: rows top-down)
        side = little(start, 4)
        return tf.where(side >= 2**31, 2**32 - side, side)

    def prefix(text, start=0):
        return tf.equal(tf.strings.substr(padded, start, len(text)), text)

    webp = prefix(b"RIFF") & prefix(b"WEBP", 8)
    vp8l = little(21, 4)
    return tf.case([
        (prefix(b"\x89PNG\r\n\x1a\n"), size(lambda: big(20, 4), lambda: big(16, 4))),
        (prefix(b"GIF8"), size(lambda: little(8, 2), lambda: little(6, 2))),
        (prefix(b"BM"), size(lambda: bmp_side(22), lambda: bmp_side(18))),
        (webp & prefix(b"VP8 ", 12),
         size(lambda: tf.bitwise.bitwise_and(little(28, 2), 0x3FFF),
              lambda: tf.bitwise.bitwise_and(little(26, 2), 0x3FFF))),
        (webp & prefix(b"VP8L", 12),
         size(lambda: tf.bitwise.bitwise_and(tf.bitwise.right_shift(vp8l, 14), 0x3FFF) + 1,
              lambda: tf.bitwise.bitwise_and(vp8l, 0x3FFF) + 1)),
        (webp & prefix(b"VP8X", 12), size(lambda: little(27, 3) + 1, lambda: little(24, 3) + 1)),
        (tf.io.is_jpeg(image_bytes),
         lambda: tf.cast(tf.io.extract_jpeg_shape(image_bytes)[:2], tf.int64)),
    ], default=lambda: tf.zeros([2], tf.int64), exclusive=False)


def header_pixels(image_bytes):
    """height x width that an image header claims (int64; 0 for an unknown format)."""
    return tf.reduce_prod(header_size(image_bytes))


def too_large_message(max_pixels=MAX_IMAGE_PIXELS):
    return (f"image too large: its header claims more than {max_pixels:,} pixels "
            "(data.MAX_IMAGE_PIXELS); downscale it")


def check_header_pixels(image_bytes, max_pixels=MAX_IMAGE_PIXELS):
    """An assertion op: InvalidArgument when the header claims more than `max_pixels`."""
    return tf.debugging.assert_less_equal(
        header_pixels(image_bytes), tf.constant(max_pixels, tf.int64),
        message=too_large_message(max_pixels))


def error_reason(error):
    """The reason in a decoding error, without TensorFlow's op, device and tf.data names."""
    message = getattr(error, "message", None) or str(error)
    asserted = re.search(r"assertion failed: \[(.*?)\]", message)
    if asserted:  # check_header_pixels, inside a tf.data map or a graph
        message = asserted.group(1)
    message = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]( name:.*)?", "", message)
    return " ".join(message.split())[:200]


def find_unreadable_images(image_paths, log=None, every=2000,
                           max_pixels=MAX_IMAGE_PIXELS):
    """Decodes every image once; returns {index: reason} for those that fail.

    Catches what would otherwise stop training in the middle of the first
    epoch: missing, zero-byte, truncated or corrupt files, files that are not
    images, and images of more than `max_pixels` pixels (checked from the
    header, before anything is decoded).
    """
    bad = {}
    for index, path in enumerate(image_paths):
        try:
            encoded = tf.io.read_file(path)
            if int(tf.strings.length(encoded)) == 0:
                raise ValueError("empty file (0 bytes)")
            # The header as the graph reads it (every format), and as Pillow reads it.
            size = max([tuple(header_size(encoded).numpy().tolist()),
                        image_dimensions(encoded.numpy()) or (0, 0)], key=np.prod)
            if size[0] * size[1] > max_pixels:
                raise ValueError(f"image too large: {size[0]}x{size[1]} pixels, more than "
                                 f"{max_pixels:,} (data.MAX_IMAGE_PIXELS); downscale it")
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            if min(image.shape[:2]) < 1:
                raise ValueError(f"image has no pixels ({image.shape})")
        except (tf.errors.OpError, ValueError) as error:
            bad[index] = error_reason(error)
        if log and (index + 1) % every == 0:
            log(f"checked {index + 1}/{len(image_paths)} images ({len(bad)} unreadable)")
    return bad


def split_items(num_items, evaluable, fractions, seed):
    """Seeded item-level split into train/validation/test index arrays.

    Only `evaluable` (labelled) items can go to validation or test; the others
    are training items (they still teach the CF head).
    """
    train_fraction, val_fraction, test_fraction = fractions
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6 or val_fraction <= 0 \
            or test_fraction <= 0 or train_fraction <= 0:
        raise ValueError(f"split fractions must be > 0 and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(evaluable)
    rng.shuffle(candidates)
    n_val, n_test = _split_sizes(num_items, len(candidates), fractions)
    val = np.sort(candidates[:n_val])
    test = np.sort(candidates[n_val:n_val + n_test])
    train = np.setdiff1d(np.arange(num_items), np.concatenate([val, test]))
    return {"train": train, "validation": val, "test": test}


def split_class_notes(labels, labelled, splits, label_names):
    """Warnings about classes that a split leaves degenerate: no labelled training item has
    them (the model never sees a positive), or no test item has them (left out of test mAP),
    or every test item has them (AP 1.0 for any scores, left out too)."""
    labels = np.asarray(labels) > 0
    names = np.asarray(label_names, dtype=object)
    train = splits["train"][np.asarray(labelled)[splits["train"]]]
    in_train = labels[train].any(axis=0)
    test = labels[splits["test"]]
    notes = []
    for mask, why in [
            (~in_train, "no labelled training item has them: the model never sees a positive "
                        "(they are only in validation or test)"),
            (~test.any(axis=0), "no test item has them: they are left out of test mAP"),
            (test.all(axis=0) & (len(test) > 0),
             "every test item has them: AP would be 1.0 for any scores, so they are left out "
             "of test mAP")]:
        if mask.any():
            notes.append(f"warning: {int(mask.sum())} class(es) {why}: "
                         f"{names[mask][:20].tolist()}")
    return notes


def _split_sizes(num_items, num_labelled, fractions):
    """Items of the validation and test splits, or ValueError when the labelled items are too
    few for them and at least one training item."""
    n_val = max(1, int(round(fractions[1] * num_items)))
    n_test = max(1, int(round(fractions[2] * num_items)))
    if n_val + n_test >= num_labelled:
        raise ValueError(f"only {num_labelled} labelled items: too few for a validation "
                         f"split of {n_val} and a test split of {n_test}")
    return n_val, n_test


def check_trainable(labels, labelled, label_names, fractions, where):
    """UserError, before any training, for a catalogue that stage 2 cannot train or evaluate
    in a meaningful way: fewer than two classes (one class ranks every item first: mAP 1.0
    whatever the model learns), or too few labelled items for the --split. `where`: the
    items file, for the message."""
    if len(label_names) < 2:
        raise UserError(
            f"{where}: only {len(label_names)} class(es) {list(label_names)}: a classifier needs "
            "at least two (with one, every item ranks first and mAP is 1.0 whatever the model "
            "learns). Add items of other classes, or check --label_separator, --ignore_labels "
            "and --min_label_count.")
    try:
        _split_sizes(len(labels), int(np.sum(labelled)), fractions)
    except ValueError as error:
        raise UserError(f"{where}: {len(labels)} item(s), --split="
                        f"{','.join(str(f) for f in fractions)}: {error}; the catalogue needs "
                        "more labelled items (checked before stage 1 trains).") from None


def mask_labels(labelled, train_indices, label_ratio, seed):
    """Each training item keeps its labels with probability `label_ratio`.

    Returns a copy of `labelled` with the dropped training items set False;
    validation and test items are untouched.
    """
    if not 0.0 < label_ratio <= 1.0:
        raise ValueError(f"label_ratio must be in (0, 1], got {label_ratio}")
    labelled = labelled.copy()
    if label_ratio < 1.0:
        rng = np.random.default_rng(seed + 1)
        drop = rng.random(len(train_indices)) >= label_ratio
        labelled[train_indices[drop]] = False
    return labelled


def nearest_cf_neighbours(targets, has_vector, chunk=2048):
    """Index of each item's nearest other item in CF space (Euclidean); -1 without a vector."""
    candidates = np.flatnonzero(has_vector)
    pool = targets[candidates].astype(np.float32)
    squared = (pool ** 2).sum(axis=1)
    nearest = np.full(len(targets), -1, np.int64)
    for start in range(0, len(candidates), chunk):
        rows = candidates[start:start + chunk]
        block = pool[start:start + chunk]
        distance = squared[None, :] - 2.0 * block @ pool.T + (block ** 2).sum(axis=1)[:, None]
        distance[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf  # not itself
        nearest[rows] = candidates[distance.argmin(axis=1)]
    return nearest


def pack_targets(labels, labelled, cf_targets, cf_weights):
    return {
        "labels": np.concatenate([labels, labelled[:, None]], axis=1).astype(np.float32),
        "cf": np.concatenate([cf_targets, cf_weights[:, None]], axis=1).astype(np.float32),
    }


def _augment(image, seed):
    """Random horizontal flip and a random crop of 80-100% of each side, resized back."""
    height, width = image.shape[0], image.shape[1]
    image = tf.image.stateless_random_flip_left_right(image, seed)
    scale = tf.random.stateless_uniform([], seed + 1, 0.8, 1.0)
    crop = tf.cast(tf.round(scale * [height, width]), tf.int32)
    image = tf.image.stateless_random_crop(image, tf.concat([crop, [3]], 0), seed + 2)
    image = tf.image.resize(image, [height, width], antialias=True)
    return image


def make_dataset(image_paths, targets, image_size, batch_size, training, seed=0, cache=True):
    """Builds the tf.data pipeline for one split.

    Order: read -> decode/resize -> cache (uint8) -> shuffle -> augment ->
    batch -> prefetch. Decoding is the slow part, so it happens once and the
    small uint8 images are cached in memory; shuffling after the cache gives a
    new order every epoch; augmentation after the shuffle differs every epoch.
    (`cache=False` only for measuring the pipeline: scripts/benchmark.py.)
    """
    image_size = tuple(image_size)
    images = tf.data.Dataset.from_tensor_slices(np.asarray(image_paths))
    images = images.map(lambda path: decode_and_resize(tf.io.read_file(path), image_size),
                        num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(targets)))
    if cache:
        dataset = dataset.cache()
    return batch_examples(dataset, batch_size, training, seed, shuffle_buffer=len(image_paths))


def batch_examples(dataset, batch_size, training, seed=0, shuffle_buffer=10_000):
    """(uint8 image, targets) examples -> shuffle -> augment -> batch -> prefetch.

    The part of the pipeline after the cache, shared by `make_dataset` and the TFRecord
    reader (cfimage/stage2/tfrecords.py), so that both feed the model identical batches.
    """
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda example, s: (_augment(tf.cast(example[0], tf.float32), s), example[1]),
            num_parallel_calls=AUTOTUNE)
    else:
        dataset = dataset.map(lambda image, y: (tf.cast(image, tf.float32), y))
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
