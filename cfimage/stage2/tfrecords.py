"""Sharded TFRecords of decoded images, for catalogues whose images do not fit in memory.

`data.make_dataset` decodes every image once and caches the uint8 pixels in RAM: H x W x 3
bytes per item (64 px: 12 KB, 224 px: 150 KB, so 1M items at 224 px need ~150 GB). Past the
machine's memory, write the catalogue once with `scripts/make_tfrecords.py` and train with
`--tfrecords=PATTERN`, or let train.py do it (`shards_for_run`: when the decoded images
would need more than --cache_limit_gb, it writes the shards into the workdir). Stage 2
then streams the already decoded, resized images from the shards (local paths or gs://...,
anything tf.io.gfile reads) instead of decoding image files.

One record per item, shards hold contiguous runs of items in catalogue order:
  item_id  bytes
  image    bytes: H*W*3 uint8, row-major (decode_and_resize at the manifest's image size)
  labels   float (C + 1): multi-hot labels, then the labelled flag     (data.pack_targets)
  cf       float (d + 1): CF target, then its weight (0 = no vector)  (data.pack_targets)
Next to the shards, tfrecords.json (the manifest) gives the image size, the label names,
C, d and the shard list.

Training reads the targets from train.py's own arrays (looked up by item_id), not from the
records: the split, --label_ratio and the CF vectors of this run apply, and the records stay
valid across runs; the stored targets serve other readers and the round-trip test.
"""

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

from cfimage import atomic
from cfimage.errors import UserError
from cfimage.stage2 import data

MANIFEST = "tfrecords.json"


def shard_paths(out_dir, num_shards, prefix="items"):
    return [os.path.join(out_dir, f"{prefix}-{k:05d}-of-{num_shards:05d}.tfrecord")
            for k in range(num_shards)]


def _example(item_id, image, labels, cf):
    feature = {
        "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item_id])),
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
        "labels": tf.train.Feature(float_list=tf.train.FloatList(value=labels)),
        "cf": tf.train.Feature(float_list=tf.train.FloatList(value=cf)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_tfrecords(out_dir, item_ids, image_paths, targets, image_size, label_names=(),
                    num_shards=16, log=print):
    """Writes the shards and the manifest to `out_dir`; returns the shard paths.

    targets: {"labels": (n, C + 1), "cf": (n, d + 1)} as made by `data.pack_targets`.
    Each shard is written under a temporary name and renamed when complete.
    """
    item_ids = np.asarray(item_ids).astype(str)
    n = len(item_ids)
    if not (len(image_paths) == len(targets["labels"]) == len(targets["cf"]) == n) or n == 0:
        raise ValueError(f"write_tfrecords: {n} item ids, {len(image_paths)} images and "
                         f"{len(targets['labels'])}/{len(targets['cf'])} target rows; need the "
                         "same number, at least one")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    num_shards = min(num_shards, n)
    image_size = tuple(int(s) for s in image_size)
    tf.io.gfile.makedirs(out_dir)
    paths = shard_paths(out_dir, num_shards)
    bounds = np.linspace(0, n, num_shards + 1).round().astype(int)
    images = tf.data.Dataset.from_tensor_slices(np.asarray(image_paths)).map(
        lambda path: data.decode_and_resize(tf.io.read_file(path), image_size),
        num_parallel_calls=data.AUTOTUNE, deterministic=True).prefetch(data.AUTOTUNE)
    images = iter(images)
    for k, path in enumerate(paths):
        with atomic.replacing(path) as temporary, tf.io.TFRecordWriter(temporary) as writer:
            for i in range(bounds[k], bounds[k + 1]):
                writer.write(_example(item_ids[i].encode(), _next_image(images, i, item_ids,
                                                                        image_paths),
                                      targets["labels"][i], targets["cf"][i]))
        log(f"wrote {path} ({bounds[k + 1] - bounds[k]} items)")
    manifest = {"image_size": list(image_size), "num_items": n, "label_names": list(label_names),
                "labels_width": int(targets["labels"].shape[1]),
                "cf_width": int(targets["cf"].shape[1]),
                "shards": [os.path.basename(p) for p in paths]}
    with tf.io.gfile.GFile(os.path.join(out_dir, MANIFEST), "w") as f:
        f.write(json.dumps(manifest, indent=2))
    return paths


def _next_image(images, i, item_ids, image_paths):
    """The next decoded image, or a UserError naming the item and file that cannot be decoded
    (a bomb header over data.MAX_IMAGE_PIXELS, a corrupt or unknown file)."""
    try:
        return next(images).numpy()
    except tf.errors.OpError as error:
        raise UserError(f"{image_paths[i]} (item {str(item_ids[i])!r}): cannot be written to "
                        f"the TFRecord shards: {data.error_reason(error)}. Fix or remove the "
                        "image (train.py checks every image first: --on_bad_image).") from None


def cache_bytes(num_items, image_size):
    """Memory that data.make_dataset's in-RAM cache of decoded images needs."""
    return int(num_items) * int(image_size[0]) * int(image_size[1]) * 3


def default_cache_limit():
    """Half of this machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def shards_for_run(out_dir, item_ids, image_paths, targets, image_size, label_names,
                   shard_bytes=150 * 2**20, log=print):
    """Stage 2's automatic switch for catalogues too big to cache: writes the catalogue's
    shards into `out_dir` once (written again when the items or the image size differ) and
    returns their pattern for `make_dataset`."""
    item_ids = np.asarray(item_ids).astype(str)
    key = {"image_size": [int(s) for s in image_size], "num_items": len(item_ids),
           "items": _fingerprint(item_ids, image_paths)}
    key_path = os.path.join(out_dir, "source.json")
    pattern = os.path.join(out_dir, "items-*")
    if tf.io.gfile.exists(key_path) and tf.io.gfile.exists(os.path.join(out_dir, MANIFEST)):
        with tf.io.gfile.GFile(key_path) as f:
            if json.loads(f.read()) == key:
                log(f"reusing the TFRecord shards in {out_dir}")
                return pattern
    if tf.io.gfile.isdir(out_dir):
        tf.io.gfile.rmtree(out_dir)
    num_shards = max(1, -(-cache_bytes(len(item_ids), image_size) // shard_bytes))
    log(f"writing {len(item_ids)} decoded images as {num_shards} TFRecord shard(s) to {out_dir}")
    write_tfrecords(out_dir, item_ids, image_paths, targets, image_size, label_names,
                    num_shards=num_shards, log=log)
    with tf.io.gfile.GFile(key_path, "w") as f:
        f.write(json.dumps(key))
    return pattern


def _fingerprint(item_ids, image_paths):
    digest = hashlib.sha256()
    for item_id, path in zip(item_ids, image_paths):
        digest.update(f"{item_id}\t{path}\n".encode())
    return digest.hexdigest()


def read_manifest(pattern):
    """The manifest next to the shards that `pattern` matches, and the sorted shard paths."""
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"--tfrecords={pattern!r} matches no file; write the shards with "
                         "scripts/make_tfrecords.py and pass e.g. --tfrecords=DIR/items-*")
    path = os.path.join(os.path.dirname(files[0]), MANIFEST)
    if not tf.io.gfile.exists(path):
        raise ValueError(f"{path} is missing: the shards of {pattern!r} were not written by "
                         "scripts/make_tfrecords.py (or the manifest was not copied with them)")
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read()), files


def make_dataset(pattern, image_size, batch_size, training, seed=0, item_ids=None,
                 targets=None, shuffle_buffer=10_000):
    """The stage-2 pipeline from TFRecord shards.

    Order: list shards -> (training: shuffle shards) -> interleave records -> parse ->
    keep the items of `item_ids` (if given) and take their targets from `targets` ->
    (evaluation: cache) -> shuffle -> augment -> batch -> prefetch (`data.batch_examples`).

    Evaluation reads the shards one after another, so examples come in catalogue order (the
    order of `item_ids` when it is sorted like the catalogue): predictions line up with the
    split's label rows. Training interleaves shuffled shards. Under a multi-worker strategy
    every split is auto-sharded by DATA: each worker reads all shards and keeps its share of
    every global batch, so all workers run the same number of steps (FILE sharding would read
    less but leaves workers with unequal step counts, which stalls synchronous training).
    Without `item_ids`: all records, with their stored targets.
    """
    manifest, files = read_manifest(pattern)
    image_size = tuple(int(s) for s in image_size)
    if tuple(manifest["image_size"]) != image_size:
        raise ValueError(f"--tfrecords={pattern!r} holds {manifest['image_size']} images but "
                         f"--image_size is {image_size}: write the shards again at that size")
    height, width = image_size
    features = {
        "item_id": tf.io.FixedLenFeature([], tf.string),
        "image": tf.io.FixedLenFeature([], tf.string),
        "labels": tf.io.FixedLenFeature([manifest["labels_width"]], tf.float32),
        "cf": tf.io.FixedLenFeature([manifest["cf_width"]], tf.float32),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        image = tf.reshape(tf.io.decode_raw(example["image"], tf.uint8), [height, width, 3])
        return example["item_id"], image, {"labels": example["labels"], "cf": example["cf"]}

    dataset = tf.data.Dataset.from_tensor_slices(files)
    if training:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                                     num_parallel_calls=data.AUTOTUNE, deterministic=False)
    else:
        dataset = dataset.interleave(tf.data.TFRecordDataset, cycle_length=1)
    dataset = dataset.map(parse, num_parallel_calls=data.AUTOTUNE, deterministic=not training)

    if item_ids is not None:
        item_ids = np.asarray(item_ids).astype(str)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(item_ids, np.arange(len(item_ids), dtype=np.int64)),
            default_value=-1)
        targets = {k: tf.constant(np.asarray(v, np.float32)) for k, v in targets.items()}
        dataset = dataset.map(lambda i, image, y: (table.lookup(i), image))
        dataset = dataset.filter(lambda row, image: row >= 0)
        dataset = dataset.map(lambda row, image: (
            image, {k: tf.gather(v, row) for k, v in targets.items()}))
        num_examples = len(item_ids)
    else:
        dataset = dataset.map(lambda i, image, y: (image, y))
        num_examples = manifest["num_items"]
    if not training:
        dataset = dataset.cache()  # evaluation splits are small: read the shards once
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    return data.batch_examples(dataset, batch_size, training, seed,
                               shuffle_buffer=min(shuffle_buffer, num_examples))
