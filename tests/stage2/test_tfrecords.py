"""TFRecord shards give exactly the examples of the image-file pipeline."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cfimage.catalogue import reader as catalogue_lib
from cfimage.stage2 import data
from cfimage.catalogue import demo
from cfimage.stage2 import tfrecords

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
IMAGE_SIZE = (32, 24)  # not square: catches a height/width swap


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfrecords")
    root = demo.make_demo_catalogue(str(base / "catalogue"), seed=5, num_items=60, num_users=30,
                                    image_size=32)
    catalogue = catalogue_lib.load_catalogue(root)
    rng = np.random.default_rng(0)
    has_vector = rng.random(catalogue.num_items) < 0.7
    cf = np.where(has_vector[:, None], rng.normal(size=(catalogue.num_items, 4)), 0.0)
    targets = data.pack_targets(catalogue.labels, catalogue.labelled, cf.astype(np.float32),
                                has_vector.astype(np.float32))
    out = str(base / "shards")
    paths = tfrecords.write_tfrecords(out, catalogue.item_ids, catalogue.image_paths, targets,
                                      IMAGE_SIZE, catalogue.label_names, num_shards=4,
                                      log=lambda message: None)
    return catalogue, targets, out, paths


def batches(dataset):
    return [(x.numpy(), {k: v.numpy() for k, v in y.items()}) for x, y in dataset]


def assert_same(got, expected):
    assert len(got) == len(expected)
    for (x, y), (x_expected, y_expected) in zip(got, expected):
        np.testing.assert_array_equal(x, x_expected)
        assert set(y) == {"labels", "cf"}
        for key in y:
            np.testing.assert_array_equal(y[key], y_expected[key])


def test_round_trip_equals_the_image_file_pipeline(tiny):
    catalogue, targets, out, paths = tiny
    assert len(paths) == 4 and all(os.path.isfile(p) for p in paths)
    expected = batches(data.make_dataset(catalogue.image_paths, targets, IMAGE_SIZE, 16,
                                         training=False))
    got = batches(tfrecords.make_dataset(os.path.join(out, "items-*"), IMAGE_SIZE, 16,
                                         training=False))
    assert_same(got, expected)
    assert got[0][0].shape == (16, 32, 24, 3) and got[0][0].dtype == np.float32


def test_a_split_reads_its_items_in_order_with_the_run_s_targets(tiny):
    catalogue, targets, out, _ = tiny
    index = np.array([3, 4, 17, 30, 31, 32, 59])
    run_targets = {k: v[index] + 1.0 for k, v in targets.items()}  # differ from the stored ones
    expected = batches(data.make_dataset(catalogue.image_paths[index], run_targets, IMAGE_SIZE,
                                         4, training=False))
    got = batches(tfrecords.make_dataset(os.path.join(out, "items-*"), IMAGE_SIZE, 4,
                                         training=False, item_ids=catalogue.item_ids[index],
                                         targets=run_targets))
    assert_same(got, expected)


def test_training_reads_every_item_of_the_split_once_per_epoch(tiny):
    catalogue, targets, out, _ = tiny
    index = np.arange(0, 60, 3)
    marked = {"labels": targets["labels"][index],
              "cf": np.repeat(index[:, None].astype(np.float32), targets["cf"].shape[1], 1)}
    dataset = tfrecords.make_dataset(os.path.join(out, "items-*"), IMAGE_SIZE, 8, training=True,
                                     item_ids=catalogue.item_ids[index], targets=marked)
    for _ in range(2):
        seen = np.concatenate([y["cf"][:, 0] for _, y in batches(dataset)])
        assert sorted(seen.astype(int)) == list(index)


def test_wrong_image_size_and_missing_shards_give_clear_errors(tiny, tmp_path):
    _, _, out, _ = tiny
    with pytest.raises(ValueError, match="--image_size is"):
        tfrecords.make_dataset(os.path.join(out, "items-*"), (64, 64), 8, training=False)
    with pytest.raises(ValueError, match="matches no file"):
        tfrecords.make_dataset(str(tmp_path / "nothing-*"), IMAGE_SIZE, 8, training=False)


@pytest.mark.slow
def test_script_writes_shards_and_manifest(tiny, tmp_path):
    catalogue, _, _, _ = tiny
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "make_tfrecords.py"),
         f"--catalogue={catalogue.root}", f"--out={tmp_path}/out", "--image_size=32x24",
         "--num_shards=3"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.path.abspath(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, files = tfrecords.read_manifest(str(tmp_path / "out" / "items-*"))
    assert len(files) == 3 and manifest["num_items"] == 60
    assert manifest["image_size"] == [32, 24] and manifest["cf_width"] == 2
    count = sum(1 for f in files for _ in tf.data.TFRecordDataset(f))
    assert count == 60


def test_shards_for_run_writes_once_and_again_when_the_items_change(tiny, tmp_path):
    catalogue, targets, _, _ = tiny
    messages = []
    out = str(tmp_path / "auto")
    args = (catalogue.item_ids, catalogue.image_paths, targets, IMAGE_SIZE,
            catalogue.label_names)
    # 60 items of 32x24x3 bytes in shards of at most 20,000 bytes: 7 shards.
    pattern = tfrecords.shards_for_run(out, *args, shard_bytes=20_000, log=messages.append)
    manifest, files = tfrecords.read_manifest(pattern)
    assert len(files) == 7 and manifest["num_items"] == 60
    assert any("writing 60 decoded images as 7 TFRecord shard(s)" in m for m in messages)
    assert tfrecords.shards_for_run(out, *args, log=messages.append) == pattern
    assert messages[-1] == f"reusing the TFRecord shards in {out}"
    # Other items (here: the first 30): the shards are written again for them.
    fewer = (catalogue.item_ids[:30], catalogue.image_paths[:30],
             {k: v[:30] for k, v in targets.items()}, IMAGE_SIZE, catalogue.label_names)
    tfrecords.shards_for_run(out, *fewer, log=messages.append)
    assert tfrecords.read_manifest(pattern)[0]["num_items"] == 30
    assert tfrecords.cache_bytes(60, IMAGE_SIZE) == 60 * 32 * 24 * 3
    assert tfrecords.default_cache_limit() > 2**28


@pytest.mark.slow
def test_train_streams_from_shards_when_the_images_exceed_the_cache_limit(tiny, tmp_path):
    catalogue, _, _, _ = tiny
    ids = catalogue.item_ids
    np.savez(tmp_path / "vectors.npz", ids=ids,
             vectors=np.random.default_rng(0).normal(size=(len(ids), 4)).astype(np.float32))
    result = subprocess.run(
        [sys.executable, "-m", "cfimage.train", f"--catalogue={catalogue.root}",
         f"--cf_embeddings={tmp_path}/vectors.npz", "--image_size=32", "--batch_size=8",
         "--epochs=1", "--cache_limit_gb=0.00001", "--noexport", "--threads=1",
         "--backbone=efficientnet_lite0", "--weights=none",
         f"--workdir={tmp_path}/run"], capture_output=True, text=True, timeout=600,
        cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": os.path.abspath(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "more than the cache limit 0.00 GiB (--cache_limit_gb)" in result.stdout
    manifest, files = tfrecords.read_manifest(str(tmp_path / "run" / "tfrecords_32x32" / "items-*"))
    assert manifest["num_items"] == 60 and manifest["image_size"] == [32, 32]
    assert (tmp_path / "run" / "metrics.json").is_file()
