import filecmp
import hashlib
import os

import numpy as np

from cfimage.catalogue import reader as catalogue_lib
from cfimage.catalogue import demo


def test_demo_catalogue_is_deterministic_and_valid(tmp_path):
    a = demo.make_demo_catalogue(str(tmp_path / "a"), seed=5, num_items=60, num_users=30,
                                 image_size=32)
    b = demo.make_demo_catalogue(str(tmp_path / "b"), seed=5, num_items=60, num_users=30,
                                 image_size=32)
    for name in ("items.csv", "interactions.csv", "images/item00007.png"):
        assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False)
    cat = catalogue_lib.load_catalogue(a)
    assert cat.num_items == 60 and cat.num_classes == len(demo.CLASSES)
    assert cat.multi_label


def test_demo_images_decode_to_the_pixels_drawn_before_the_encoder_changed(tmp_path):
    """The digest of every decoded image of a small demo catalogue, taken when demo.py still
    had its own PNG encoder: the library encoder gives the same pixels (PNG is lossless)."""
    import tensorflow as tf
    root = demo.make_demo_catalogue(str(tmp_path), seed=5, num_items=60, num_users=30,
                                    image_size=32)
    digest = hashlib.sha256()
    for i in range(60):
        encoded = tf.io.read_file(os.path.join(root, f"images/item{i:05d}.png"))
        digest.update(tf.io.decode_png(encoded, channels=3).numpy().tobytes())
    assert digest.hexdigest() == (
        "abee379fd301b5b13f9cf03a0a5f418d8bf5af22ec532fd9381a3bccb03525ed")


def test_interactions_follow_the_labels(tmp_path):
    """Users' items share classes far more often than random pairs of items do."""
    root = demo.make_demo_catalogue(str(tmp_path), seed=1, num_items=300, num_users=100,
                                    image_size=16)
    cat = catalogue_lib.load_catalogue(root)
    index = {item: i for i, item in enumerate(cat.item_ids)}
    labels = cat.labels
    same_user = []
    for _, group in cat.interactions.groupby("user_id"):
        rows = [index[i] for i in group.item_id]
        a, b = labels[rows[0::2][:10]], labels[rows[1::2][:10]]
        n = min(len(a), len(b))
        same_user.append(((a[:n] * b[:n]).sum(axis=1) > 0).mean())
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(labels), size=(2000, 2))
    random_pairs = ((labels[pairs[:, 0]] * labels[pairs[:, 1]]).sum(axis=1) > 0).mean()
    assert np.mean(same_user) > random_pairs + 0.2


def test_png_writer_round_trips_through_tensorflow(tmp_path):
    import tensorflow as tf
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    demo.write_png(str(tmp_path / "x.png"), pixels)
    decoded = tf.io.decode_png(tf.io.read_file(str(tmp_path / "x.png"))).numpy()
    np.testing.assert_array_equal(decoded, pixels)
