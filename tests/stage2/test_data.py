import numpy as np
import pytest
import tensorflow as tf

from cfimage.catalogue import reader as catalogue_lib
from cfimage.stage2 import data


def test_split_is_seeded_disjoint_and_keeps_unlabelled_items_in_train():
    labelled = np.ones(100, bool)
    labelled[:10] = False
    a = data.split_items(100, labelled, (0.7, 0.1, 0.2), seed=1)
    b = data.split_items(100, labelled, (0.7, 0.1, 0.2), seed=1)
    c = data.split_items(100, labelled, (0.7, 0.1, 0.2), seed=2)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["test"], c["test"])
    assert (len(a["validation"]), len(a["test"])) == (10, 20)
    assert len(np.concatenate(list(a.values()))) == 100
    assert len(set(a["train"]) & set(a["test"])) == 0
    assert set(range(10)) <= set(a["train"])


def test_bad_split_fractions_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        data.split_items(10, np.ones(10, bool), (0.7, 0.2, 0.2), seed=0)


def test_label_ratio_masks_only_training_items():
    labelled = np.ones(1000, bool)
    train = np.arange(800)
    masked = data.mask_labels(labelled, train, 0.3, seed=0)
    assert masked[800:].all()
    assert 0.25 < masked[:800].mean() < 0.35
    assert data.mask_labels(labelled, train, 1.0, seed=0).all()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        data.mask_labels(labelled, train, 0.0, seed=0)


def test_decode_and_resize_handles_png_jpeg_and_greyscale():
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    for encoded in (tf.io.encode_png(pixels), tf.io.encode_jpeg(pixels),
                    tf.io.encode_png(pixels[:, :, :1])):
        image = data.decode_and_resize(encoded, (12, 8))
        assert image.shape == (12, 8, 3) and image.dtype == tf.uint8
    # No resizing needed: the PNG comes back exactly.
    same = data.decode_and_resize(tf.io.encode_png(pixels), (20, 30)).numpy()
    np.testing.assert_array_equal(same, pixels)


def test_pipeline_batches_images_and_packed_targets(tiny_demo):
    cat = catalogue_lib.load_catalogue(tiny_demo)
    n = 40
    targets = data.pack_targets(cat.labels[:n], cat.labelled[:n],
                                np.zeros((n, 4), np.float32), np.ones(n, np.float32))
    train = data.make_dataset(cat.image_paths[:n], targets, (24, 16), 16, training=True, seed=0)
    images, y = next(iter(train))
    assert images.shape == (16, 24, 16, 3) and images.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 255.0
    assert y["labels"].shape == (16, cat.num_classes + 1) and y["cf"].shape == (16, 5)
    evaluation = data.make_dataset(cat.image_paths[:n], targets, (24, 16), 16, training=False)
    first = np.concatenate([y["labels"].numpy() for _, y in evaluation])
    np.testing.assert_array_equal(first, targets["labels"])  # order kept, nothing dropped
    # Two epochs of the training pipeline see the items in different orders.
    epoch1 = np.concatenate([y["labels"].numpy() for _, y in train])
    epoch2 = np.concatenate([y["labels"].numpy() for _, y in train])
    assert epoch1.shape == epoch2.shape == targets["labels"].shape
    assert not np.array_equal(epoch1, epoch2)


def test_nearest_cf_neighbours_skip_self_and_items_without_vectors():
    targets = np.array([[0, 0], [0, 1], [5, 5], [0, 0.2], [100, 100]], np.float32)
    has = np.array([True, True, True, True, False])
    np.testing.assert_array_equal(data.nearest_cf_neighbours(targets, has, chunk=2),
                                  [3, 3, 1, 0, -1])
