"""Input pipeline: item split, label masking, image decoding and tf.data.

`decode_and_resize` is the one preprocessing function: training, evaluation
and the exported serving signature all call it, so a served image is seen
exactly as a training image was (before augmentation).

Targets are packed so that masks travel with them (see losses.py):
  y["labels"] = [multi-hot (C), labelled flag (1)]
  y["cf"]     = [CF target (d), confidence weight (1); weight 0 = no vector]
"""

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def decode_and_resize(image_bytes, image_size):
    """Encoded JPEG/PNG/GIF/BMP bytes -> (H, W, 3) uint8, resized (aspect not kept).

    Greyscale is expanded to RGB and alpha dropped (channels=3); animated GIFs
    give their first frame.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


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
    n_val = max(1, int(round(val_fraction * num_items)))
    n_test = max(1, int(round(test_fraction * num_items)))
    if n_val + n_test >= len(candidates):
        raise ValueError(f"only {len(candidates)} labelled items: too few for a validation "
                         f"split of {n_val} and a test split of {n_test}")
    val = np.sort(candidates[:n_val])
    test = np.sort(candidates[n_val:n_val + n_test])
    train = np.setdiff1d(np.arange(num_items), np.concatenate([val, test]))
    return {"train": train, "validation": val, "test": test}


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


def scale_cf_targets(vectors, has_vector, target_rms):
    """Centres the CF vectors and scales them to `target_rms` per dimension.

    Two-tower vectors have no fixed scale; the exponential CF loss needs
    targets near the initial predictions (PAPER.md, "Weak spots"). Returns the
    targets (zeros where there is no vector) and the scaling, so that
    vector = target * scale + mean.
    """
    present = vectors[has_vector].astype(np.float64)
    mean = present.mean(axis=0)
    rms = float(np.sqrt(np.mean((present - mean) ** 2))) or 1.0
    scale = rms / target_rms
    targets = np.where(has_vector[:, None], (vectors - mean) / scale, 0.0).astype(np.float32)
    return targets, {"mean": mean.tolist(), "scale": scale}


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


def make_dataset(image_paths, targets, image_size, batch_size, training, seed=0):
    """Builds the tf.data pipeline for one split.

    Order: read -> decode/resize -> cache (uint8) -> shuffle -> augment ->
    batch -> prefetch. Decoding is the slow part, so it happens once and the
    small uint8 images are cached in memory; shuffling after the cache gives a
    new order every epoch; augmentation after the shuffle differs every epoch.
    """
    image_size = tuple(image_size)
    images = tf.data.Dataset.from_tensor_slices(np.asarray(image_paths))
    images = images.map(lambda path: decode_and_resize(tf.io.read_file(path), image_size),
                        num_parallel_calls=AUTOTUNE, deterministic=True)
    dataset = tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices(targets)))
    dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(len(image_paths), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds)).map(
            lambda example, s: (_augment(tf.cast(example[0], tf.float32), s), example[1]),
            num_parallel_calls=AUTOTUNE)
    else:
        dataset = dataset.map(lambda image, y: (tf.cast(image, tf.float32), y))
    return dataset.batch(batch_size).prefetch(AUTOTUNE)
