"""The built-in demo catalogue: synthetic, deterministic, generated in seconds.

It is a smoke-test dataset, not a benchmark. Each of 8 classes has a shape and
a colour. An item carries 1-3 classes, but only about half of them are drawn
into its image, so pixels alone cannot recover every label. Users have hidden
tastes for 1-2 classes and interact mostly with items of those classes, so the
collaborative signal carries the labels the pixels hide. Some items are
unlabelled and some have no interactions, as in real catalogues.
"""

import json
import os

import numpy as np
from PIL import Image

CLASSES = (
    ("disc", (220, 40, 40)),
    ("square", (40, 160, 40)),
    ("hstripe", (40, 70, 220)),
    ("vstripe", (230, 200, 30)),
    ("ring", (200, 60, 200)),
    ("cross", (30, 200, 200)),
    ("triangle", (240, 140, 30)),
    ("diamond", (120, 120, 120)),
)
VISIBLE_PROBABILITY = 0.5


def write_png(path, pixels):
    """Writes an (H, W, 3) uint8 array as a PNG (lossless: it decodes to the same array)."""
    Image.fromarray(pixels).save(path, format="PNG")


def _shape_mask(kind, size, rng):
    """Boolean mask of one shape drawn in a size x size box."""
    yy, xx = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    dy, dx = yy - centre, xx - centre
    radius = size / 2
    thickness = max(2, size // 5)
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= radius ** 2
    if kind == "square":
        return np.ones((size, size), bool)
    if kind == "hstripe":
        return (yy // thickness) % 2 == 0
    if kind == "vstripe":
        return (xx // thickness) % 2 == 0
    if kind == "ring":
        distance = np.sqrt(dy ** 2 + dx ** 2)
        return (distance <= radius) & (distance >= radius - thickness)
    if kind == "cross":
        return (np.abs(dy) < thickness / 2) | (np.abs(dx) < thickness / 2)
    if kind == "triangle":
        return (yy >= np.abs(dx) * 2 - 0) & (yy <= size)
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= radius
    raise ValueError(kind)


def _draw_image(visible_classes, size, rng):
    image = np.empty((size, size, 3), np.float32)
    image[:] = rng.uniform(60, 200, size=3)  # background colour
    image += rng.normal(0, 18, size=(size, size, 3))
    # One or two grey distractor blobs so that "any shape" is not a cue.
    for _ in range(rng.integers(1, 3)):
        box = int(rng.integers(size // 6, size // 3))
        y, x = rng.integers(0, size - box, size=2)
        mask = _shape_mask("disc", box, rng)
        image[y:y + box, x:x + box][mask] = rng.uniform(80, 180)
    for c in visible_classes:
        kind, colour = CLASSES[c]
        box = int(rng.integers(size // 4, size // 2))
        y, x = rng.integers(0, size - box, size=2)
        mask = _shape_mask(kind, box, rng)
        jitter = rng.normal(0, 20, size=3)
        image[y:y + box, x:x + box][mask] = np.asarray(colour) + jitter
    return np.clip(image, 0, 255).astype(np.uint8)


def make_demo_catalogue(directory, seed=0, num_items=1200, num_users=400,
                        interactions_per_user=30, image_size=64):
    """Writes the demo catalogue to `directory` (reused if already complete) and returns it."""
    params = dict(seed=seed, num_items=num_items, num_users=num_users,
                  interactions_per_user=interactions_per_user, image_size=image_size, version=1)
    marker = os.path.join(directory, "demo.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == params:
                return directory
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    rng = np.random.default_rng(seed)
    num_classes = len(CLASSES)

    # Items: 1-3 classes each; 5% unlabelled in items.csv (their classes still
    # shape the image and the interactions: they are unlabelled, not classless).
    n_labels = rng.choice([1, 2, 3], size=num_items, p=[0.5, 0.35, 0.15])
    item_classes = [rng.choice(num_classes, size=k, replace=False) for k in n_labels]
    unlabelled = rng.random(num_items) < 0.05
    rows = []
    for i, classes in enumerate(item_classes):
        visible = [c for c in classes if rng.random() < VISIBLE_PROBABILITY]
        pixels = _draw_image(visible, image_size, rng)
        name = f"images/item{i:05d}.png"
        write_png(os.path.join(directory, name), pixels)
        labels = "" if unlabelled[i] else "|".join(sorted(CLASSES[c][0] for c in classes))
        rows.append((f"item{i:05d}", name, labels))

    # Users: a taste for 1-2 classes; they pick items mostly by taste, a bit by
    # popularity. 8% of items are "cold": never interacted with.
    multi_hot = np.zeros((num_items, num_classes))
    for i, classes in enumerate(item_classes):
        multi_hot[i, classes] = 1.0
    popularity = rng.lognormal(0.0, 0.7, size=num_items)
    popularity[rng.random(num_items) < 0.08] = 0.0
    interactions = []
    for u in range(num_users):
        taste = np.zeros(num_classes)
        taste[rng.choice(num_classes, size=rng.integers(1, 3), replace=False)] = 1.0
        affinity = multi_hot @ taste
        p = popularity * np.exp(2.5 * affinity)
        p /= p.sum()
        count = int(rng.integers(interactions_per_user // 2, interactions_per_user * 3 // 2))
        chosen = rng.choice(num_items, size=count, replace=False, p=p)
        for t, i in enumerate(chosen):
            rating = int(np.clip(round(3 + affinity[i] + rng.normal(0, 0.7)), 1, 5))
            interactions.append((f"user{u:04d}", f"item{i:05d}", rating, 1_600_000_000 + t))

    with open(os.path.join(directory, "items.csv"), "w") as f:
        f.write("item_id,image,labels\n")
        f.writelines(f"{i},{p},{lab}\n" for i, p, lab in rows)
    with open(os.path.join(directory, "interactions.csv"), "w") as f:
        f.write("user_id,item_id,weight,timestamp\n")
        f.writelines(f"{u},{i},{r},{t}\n" for u, i, r, t in interactions)
    with open(marker, "w") as f:  # written last: marks the catalogue complete
        json.dump(params, f)
    return directory
