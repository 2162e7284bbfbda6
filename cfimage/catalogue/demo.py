"""The built-in demo catalogues: synthetic, deterministic, generated in seconds.

kind="standard" is a smoke-test dataset, not a benchmark. Each of 8 classes has a shape and
a colour. An item carries 1-3 classes, but only about half of them are drawn
into its image, so pixels alone cannot recover every label. Users have hidden
tastes for 1-2 classes and interact mostly with items of those classes, so the
collaborative signal carries the labels the pixels hide. Some items are
unlabelled and some have no interactions, as in real catalogues.

kind="control" is the positive control of the experiments (docs/data.md, "The positive
control"): every item's interactions are a known function of what its image shows, and its
label names only part of it. Each image draws three independent visual factors: a shape
(the label, one of CONTROL_SHAPES), its colour (CONTROL_COLOURS) and the texture of the grey
background (CONTROL_TEXTURES). Each user prefers one value of each factor and picks items
with probability proportional to popularity x exp(CONTROL_TASTE . matches), so an item's CF
vector is, up to popularity and sampling noise, a function of its three factors. Learning to
predict that vector from the pixels means learning to see the shape (and colour and
texture): what the labels need, taught by every item with interactions instead of only the
labelled ones. The truth is written next to the catalogue (control_items.csv,
control_users.csv) for tests and analysis; the pipeline never reads it.
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
KINDS = ("standard", "control")

# The positive control's factors (kind="control").
CONTROL_SHAPES = ("disc", "square", "ring", "cross", "triangle", "diamond")  # = the labels
CONTROL_COLOURS = (("red", (220, 40, 40)), ("green", (40, 170, 40)), ("blue", (40, 70, 220)),
                   ("yellow", (230, 200, 30)))
CONTROL_TEXTURES = ("plain", "hstripes", "vstripes", "checker")
# Weight of a match on shape, colour, texture in a user's choice: a preferred shape makes an
# item e^2.5 ~ 12x likelier to be picked, a colour e^1.5 ~ 4.5x, a texture e^1 ~ 2.7x.
CONTROL_TASTE = (2.5, 1.5, 1.0)
CONTROL_COLD_FRACTION = 0.05  # items nobody interacts with (no CF vector)


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
                        interactions_per_user=30, image_size=64, kind="standard"):
    """Writes the demo catalogue of `kind` (KINDS) to `directory` (reused if already complete)
    and returns it."""
    if kind not in KINDS:
        raise ValueError(f"demo catalogue kind {kind!r}: choose one of {', '.join(KINDS)}")
    params = dict(seed=seed, num_items=num_items, num_users=num_users,
                  interactions_per_user=interactions_per_user, image_size=image_size, version=1,
                  kind=kind)
    marker = os.path.join(directory, "demo.json")
    if os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) == params:
                return directory
        os.remove(marker)  # another catalogue is overwritten: incomplete until written again
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    rng = np.random.default_rng(seed)
    if kind == "control":
        _write_control(directory, rng, num_items, num_users, interactions_per_user, image_size)
        with open(marker, "w") as f:  # written last: marks the catalogue complete
            json.dump(params, f)
        return directory
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

    _write_csvs(directory, rows, interactions)
    with open(marker, "w") as f:  # written last: marks the catalogue complete
        json.dump(params, f)
    return directory


# --- The positive control (kind="control") --------------------------------------------------

def _texture(name, size, rng):
    """A grey background (H, W) of the texture `name`: a random grey level, and for the
    patterned ones stripes or checks of a random period (4-7 px) and contrast (+-25-40)."""
    level = rng.uniform(90, 165)
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(4, 8))
    contrast = rng.uniform(25, 40)
    phase = rng.integers(0, period, size=2)
    rows = ((yy + phase[0]) // (period // 2 or 1)) % 2
    cols = ((xx + phase[1]) // (period // 2 or 1)) % 2
    pattern = {"plain": np.zeros((size, size)), "hstripes": rows, "vstripes": cols,
               "checker": rows ^ cols}[name]
    return level + contrast * (2 * pattern - 1) * (name != "plain")


def draw_control_image(shape, colour, texture, size, rng):
    """The image of one control item, and where its shape was drawn: (pixels, top, left,
    box). The shape fills a box of 35-60% of the side at a random place, in its colour
    (jittered by +-10 per channel); pixel noise is +-8 (standard deviations)."""
    background = _texture(CONTROL_TEXTURES[texture], size, rng)
    image = np.repeat(background[:, :, None], 3, axis=2)
    box = int(rng.integers(int(size * 0.35), int(size * 0.6) + 1))
    top, left = (int(v) for v in rng.integers(0, size - box + 1, size=2))
    mask = _shape_mask(CONTROL_SHAPES[shape], box, rng)
    image[top:top + box, left:left + box][mask] = (np.asarray(CONTROL_COLOURS[colour][1])
                                                   + rng.normal(0, 10, size=3))
    image += rng.normal(0, 8, size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), top, left, box


def control_affinity(item_factors, user_taste):
    """The planted function: CONTROL_TASTE-weighted matches of each item's (shape, colour,
    texture) with each user's preferred (shape, colour, texture): (users, items)."""
    item_factors, user_taste = np.asarray(item_factors), np.asarray(user_taste)
    matches = item_factors[None, :, :] == user_taste[:, None, :]
    return matches.astype(np.float64) @ np.asarray(CONTROL_TASTE)


def _write_control(directory, rng, num_items, num_users, interactions_per_user, image_size):
    factors = np.stack([rng.integers(0, len(CONTROL_SHAPES), num_items),
                        rng.integers(0, len(CONTROL_COLOURS), num_items),
                        rng.integers(0, len(CONTROL_TEXTURES), num_items)], axis=1)
    items, truth = [], []
    for i, (shape, colour, texture) in enumerate(factors):
        pixels, top, left, box = draw_control_image(shape, colour, texture, image_size, rng)
        name = f"images/item{i:05d}.png"
        write_png(os.path.join(directory, name), pixels)
        items.append((f"item{i:05d}", name, CONTROL_SHAPES[shape]))
        truth.append((f"item{i:05d}", CONTROL_SHAPES[shape], CONTROL_COLOURS[colour][0],
                      CONTROL_TEXTURES[texture], top, left, box))

    # Users prefer one value of each factor; items are picked by popularity x taste.
    taste = np.stack([rng.integers(0, len(CONTROL_SHAPES), num_users),
                      rng.integers(0, len(CONTROL_COLOURS), num_users),
                      rng.integers(0, len(CONTROL_TEXTURES), num_users)], axis=1)
    popularity = rng.lognormal(0.0, 0.5, size=num_items)
    popularity[rng.random(num_items) < CONTROL_COLD_FRACTION] = 0.0
    affinity = control_affinity(factors, taste)
    interactions = []
    for u in range(num_users):
        p = popularity * np.exp(affinity[u])
        p /= p.sum()
        count = int(rng.integers(interactions_per_user // 2, interactions_per_user * 3 // 2))
        count = min(count, int(np.count_nonzero(p)))
        for t, i in enumerate(rng.choice(num_items, size=count, replace=False, p=p)):
            rating = int(np.clip(round(2 + affinity[u, i] / 2 + rng.normal(0, 0.5)), 1, 5))
            interactions.append((f"user{u:04d}", f"item{i:05d}", rating, 1_600_000_000 + t))

    _write_csvs(directory, items, interactions)
    with open(os.path.join(directory, "control_items.csv"), "w") as f:
        f.write("item_id,shape,colour,texture,top,left,box\n")
        f.writelines(",".join(map(str, row)) + "\n" for row in truth)
    with open(os.path.join(directory, "control_users.csv"), "w") as f:
        f.write("user_id,shape,colour,texture\n")
        f.writelines(f"user{u:04d},{CONTROL_SHAPES[s]},{CONTROL_COLOURS[c][0]},"
                     f"{CONTROL_TEXTURES[t]}\n" for u, (s, c, t) in enumerate(taste))


def _write_csvs(directory, items, interactions):
    """items.csv (item_id, image, labels) and interactions.csv of a generated catalogue."""
    with open(os.path.join(directory, "items.csv"), "w") as f:
        f.write("item_id,image,labels\n")
        f.writelines(f"{i},{p},{lab}\n" for i, p, lab in items)
    with open(os.path.join(directory, "interactions.csv"), "w") as f:
        f.write("user_id,item_id,weight,timestamp\n")
        f.writelines(f"{u},{i},{r},{t}\n" for u, i, r, t in interactions)
