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


# --- The positive control (kind="control") ------------------------------------------------

def _control(tmp_path, name="control", seed=4, num_items=240, num_users=120, image_size=32):
    return demo.make_demo_catalogue(str(tmp_path / name), seed=seed, num_items=num_items,
                                    num_users=num_users, image_size=image_size, kind="control")


def _truth(root):
    import pandas as pd
    return (pd.read_csv(os.path.join(root, "control_items.csv")),
            pd.read_csv(os.path.join(root, "control_users.csv")))


def test_control_is_deterministic_given_its_seed(tmp_path):
    a, b = _control(tmp_path, "a"), _control(tmp_path, "b")
    other = _control(tmp_path, "other", seed=5)
    for name in ("items.csv", "interactions.csv", "control_items.csv", "control_users.csv",
                 "images/item00007.png"):
        assert filecmp.cmp(os.path.join(a, name), os.path.join(b, name), shallow=False)
    assert not filecmp.cmp(os.path.join(a, "interactions.csv"),
                           os.path.join(other, "interactions.csv"), shallow=False)


def test_control_labels_are_the_shape_and_every_item_is_labelled(tmp_path):
    root = _control(tmp_path)
    cat = catalogue_lib.load_catalogue(root)
    items, _ = _truth(root)
    assert sorted(cat.label_names) == sorted(demo.CONTROL_SHAPES) and not cat.multi_label
    assert cat.labelled.all()
    named = [cat.label_names[k] for k in cat.labels.argmax(axis=1)]
    assert named == items.set_index("item_id").loc[cat.item_ids, "shape"].tolist()


def test_control_images_show_their_shape_colour_and_texture(tmp_path):
    """Read back from the pixels: the saturated pixels (the grey background has none) are the
    shape, drawn at the recorded box, in the recorded colour; the background's stripes run
    the recorded way."""
    from PIL import Image
    root = _control(tmp_path, num_items=60)
    items, _ = _truth(root)
    palette = dict(demo.CONTROL_COLOURS)
    for row in items.itertuples():
        pixels = np.asarray(Image.open(os.path.join(root, "images", f"{row.item_id}.png")),
                            np.float64)
        saturated = pixels.max(axis=2) - pixels.min(axis=2) > 90
        box = saturated[row.top:row.top + row.box, row.left:row.left + row.box]
        assert saturated.sum() == box.sum()  # nothing coloured outside the box

        def overlap(shape):
            mask = demo._shape_mask(shape, row.box, None)
            return (mask & box).sum() / (mask | box).sum()
        assert max(demo.CONTROL_SHAPES, key=overlap) == row.shape
        assert overlap(row.shape) > 0.95
        colour = pixels[saturated].mean(axis=0)
        nearest = min(palette, key=lambda c: np.sum((np.asarray(palette[c]) - colour) ** 2))
        assert nearest == row.colour
        grey = pixels.mean(axis=2)
        background = ~saturated
        down = np.abs(np.diff(grey, axis=0))[background[1:] & background[:-1]].mean()
        across = np.abs(np.diff(grey, axis=1))[background[:, 1:] & background[:, :-1]].mean()
        seen = {(False, False): "plain", (True, False): "hstripes", (False, True): "vstripes",
                (True, True): "checker"}[(down > 20, across > 20)]
        assert seen == row.texture, (row.item_id, down, across)


def test_control_interactions_follow_the_planted_tastes(tmp_path):
    """Each user's items match the user's preferred shape, colour and texture far more often
    than chance, in the order of the planted weights (shape > colour > texture)."""
    root = _control(tmp_path)
    cat = catalogue_lib.load_catalogue(root)
    items, users = _truth(root)
    joined = cat.interactions.merge(items, on="item_id").merge(users, on="user_id",
                                                               suffixes=("", "_liked"))
    share = {factor: (joined[factor] == joined[f"{factor}_liked"]).mean()
             for factor in ("shape", "colour", "texture")}
    chance = {"shape": 1 / len(demo.CONTROL_SHAPES), "colour": 1 / len(demo.CONTROL_COLOURS),
              "texture": 1 / len(demo.CONTROL_TEXTURES)}
    assert share["shape"] > chance["shape"] + 0.35
    assert share["colour"] > chance["colour"] + 0.2
    assert share["texture"] > chance["texture"] + 0.1
    # The affinity that chose them is the planted function of the factors.
    affinity = demo.control_affinity([[0, 1, 2], [0, 0, 0]], [[0, 1, 2], [1, 1, 1]])
    np.testing.assert_allclose(affinity, [[2.5 + 1.5 + 1.0, 2.5], [1.5, 0.0]])


def test_control_cf_vectors_predict_the_labels_the_pixels_do_not(tmp_path):
    """The design goal, checked with the diagnose probes (cfimage/experiments/probes.py) on
    truncated-SVD item vectors of the control's interactions: with 10% of the training items
    labelled, the CF vector predicts the label (the shape) far above chance while a linear
    probe on raw pixels stays near chance, and ridge regression from the pixels explains part
    of the CF vectors (held-out R² above the shuffled-pairing null)."""
    from PIL import Image

    from cfimage.experiments import probes
    from cfimage.stage1 import baselines
    n = 600
    root = _control(tmp_path, seed=0, num_items=n, num_users=200)
    cat = catalogue_lib.load_catalogue(root)
    index = {item: i for i, item in enumerate(cat.item_ids)}
    user_ids = sorted(set(cat.interactions.user_id))
    user_index = {user: u for u, user in enumerate(user_ids)}
    matrix = baselines.binary_matrix(cat.interactions.user_id.map(user_index),
                                     cat.interactions.item_id.map(index), len(user_ids), n)
    _, vectors = baselines.svd_factors(matrix, 16)
    has_vector = np.asarray(matrix.sum(axis=0)).ravel() > 0
    order = np.random.default_rng(0).permutation(n)
    train, val, test = order[:420], order[420:480], order[480:]
    labelled = train[:42]  # 10% of the training items
    y = cat.labels
    cf = probes.cf_features(vectors, has_vector)
    cf_probe = probes.label_probe(cf[labelled], y[labelled], cf[val], y[val], cf[test], False)
    cf_map = probes.fast_macro_map(y[test], cf_probe.test_scores)
    pixels = np.stack([np.asarray(Image.open(p).resize((16, 16))) for p in cat.image_paths])
    pixels = pixels.reshape(n, -1).astype(np.float32)
    pixel_probe = probes.label_probe(pixels[labelled], y[labelled], pixels[val], y[val],
                                     pixels[test], False)
    pixel_map = probes.fast_macro_map(y[test], pixel_probe.test_scores)
    chance = 1 / len(demo.CONTROL_SHAPES)
    assert cf_map > 0.6 and cf_map > 3 * chance and pixel_map < 0.3, (cf_map, pixel_map)
    train, val, test = (rows[has_vector[rows]] for rows in (train, val, test))
    r2 = probes.ridge_r2(pixels[train], vectors[train], pixels[val], vectors[val],
                         pixels[test], vectors[test])
    assert r2["r2"] > r2["null_r2"] + 0.01, r2
