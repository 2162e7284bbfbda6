"""Backbone-feature cache: pooled backbone features of every image, computed once.

A feature is what the image model's backbone computes for an image in inference mode:
  file bytes -> data.decode_and_resize (uint8) -> [view] -> float32 -> backbone -> pooled vector
with the backbone built by model.build_backbone exactly as model.build_model builds it, so a
cached feature equals the model's backbone output for the same image and weights
(tests/stage2/test_features.py checks it).

Views: "plain" (the image as served) and "flip" (mirrored left-right, the augmentation that
keeps every pixel). `features(..., views=("plain", "flip"))` returns their average, the
"flip-averaged" feature.

Storage: one pair of files per (backbone, weights, image size, view, image list) under the
cache directory (`<workdir>/features/` or a shared one):
  <backbone>_<H>x<W>_<view>_<hash>.npy   float32 (num_images, feature_dim)
  <backbone>_<H>x<W>_<view>_<hash>.json  the key: settings, and per row the image's path,
                                         size in bytes and modification time (ns), or null
                                         for a row not computed yet.
A row is reused when its image's path, size and mtime match the key (no content hash: a
rewritten image has a new mtime; a copied catalogue is recomputed once). Rows whose image
changed, or that a killed run never reached, are computed again; rows of other image lists
with the same settings are borrowed, so dropping or adding a few items costs only those.
The .npy is written before its key (each atomically), so a killed run never pairs a key with
features it does not describe; extraction saves its progress every `save_every` images and
resumes from there. Processes that want the same file at the same time (the cells an
experiment starts together on a fresh cache) take turns on <stem>.lock: the first computes,
the others then find its rows and reuse them.
"""

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import time

import numpy as np

from cfimage import atomic

VIEWS = ("plain", "flip")
FORMAT_VERSION = 1
RANDOM_BACKBONE_SEED = 0  # --weights=none: the initial weights of the backbone


@dataclasses.dataclass
class FeatureResult:
    features: np.ndarray  # (num_images, feature_dim) float32, the average over the views
    computed: int  # image-views computed in this call
    reused: int  # image-views read from the cache


def image_fingerprints(image_paths):
    """[path, size, mtime_ns] of each image: what a cached row is checked against."""
    rows = []
    for path in image_paths:
        stat = os.stat(path)
        rows.append([os.path.abspath(path), int(stat.st_size), int(stat.st_mtime_ns)])
    return rows


def settings_key(backbone, weights, image_size, view):
    """What the features depend on besides the images. A weights file counts by its path,
    size and mtime; a random backbone (weights none) by its seed."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose from {', '.join(VIEWS)}")
    if weights in (None, "none"):
        weights = f"none (seed {RANDOM_BACKBONE_SEED})"
    elif weights != "imagenet":
        weights = image_fingerprints([weights])[0]
    return {"format": FORMAT_VERSION, "backbone": backbone, "weights": weights,
            "image_size": [int(image_size[0]), int(image_size[1])], "view": view}


def _digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def cache_stem(directory, settings, image_paths):
    height, width = settings["image_size"]
    paths_hash = _digest([settings, [os.path.abspath(p) for p in image_paths]])
    name = f"{settings['backbone']}_{height}x{width}_{settings['view']}_{paths_hash}"
    return os.path.join(directory, name)


def _load(stem):
    """(key, features) of a cache file pair, or (None, None) when absent or unreadable."""
    try:
        with open(stem + ".json") as f:
            key = json.load(f)
        features = np.load(stem + ".npy")
    except (OSError, ValueError):
        return None, None
    if features.ndim != 2 or len(features) != len(key.get("images", ())):
        return None, None
    return key, features


def _save(stem, key, features):
    tmp = f"{stem}.tmp-{os.getpid()}.npy"
    np.save(tmp, features.astype(np.float32))
    os.replace(tmp, stem + ".npy")
    atomic.write_json(stem + ".json", key)


def _known_rows(directory, settings, fingerprints):
    """Cached features of these exact images (same path, size, mtime) in any cache file with
    the same settings: {row index: feature}."""
    wanted = {}
    for index, fingerprint in enumerate(fingerprints):
        wanted.setdefault(tuple(fingerprint), []).append(index)  # an image may serve two items
    found = {}
    height, width = settings["image_size"]
    pattern = f"{settings['backbone']}_{height}x{width}_{settings['view']}_*.json"
    for key_path in sorted(glob.glob(os.path.join(glob.escape(directory), pattern))):
        key, features = _load(key_path[:-len(".json")])
        if key is None or key.get("settings") != settings:
            continue
        for row, stored in enumerate(key["images"]):
            for index in wanted.get(tuple(stored), ()) if stored else ():
                found.setdefault(index, features[row])
    return found


def extraction_backbone(backbone, weights, image_size):
    """The backbone whose features the cache holds, built as model.build_model builds it
    (with --weights=none, from the seed RANDOM_BACKBONE_SEED, so that every run and every
    export rebuilds the same network). Resets Keras' random seed: seed again after it."""
    from cfimage.stage2 import model as model_lib
    if weights in (None, "none"):
        import keras
        keras.utils.set_random_seed(RANDOM_BACKBONE_SEED)
    return model_lib.build_backbone(backbone, weights, (*tuple(image_size), 3))


class FeatureExtractor:
    """The backbone as a batched function: uint8 images -> pooled features (float32).
    `model`: an extraction_backbone already built (the default builds one)."""

    def __init__(self, backbone, weights, image_size, model=None):
        import tensorflow as tf
        self.image_size = tuple(image_size)
        self.model = model or extraction_backbone(backbone, weights, self.image_size)
        self._call = tf.function(lambda images: self.model(images, training=False))

    def __call__(self, uint8_images):
        import tensorflow as tf
        return self._call(tf.cast(uint8_images, tf.float32)).numpy().astype(np.float32)


def _view_dataset(image_paths, image_size, view, batch_size):
    import tensorflow as tf
    from cfimage.stage2 import data

    def load(path):
        image = data.decode_and_resize(tf.io.read_file(path), image_size)
        return tf.image.flip_left_right(image) if view == "flip" else image

    dataset = tf.data.Dataset.from_tensor_slices(np.asarray(image_paths, dtype=str))
    return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=True).batch(batch_size).prefetch(2)


def view_features(directory, image_paths, backbone, weights, image_size, view, *,
                  batch_size=32, save_every=512, get_extractor=None, log=print):
    """Features of one view of every image: (features (n, d), computed, reused).
    `get_extractor()` returns the FeatureExtractor to use (built only if a row is missing)."""
    settings = settings_key(backbone, weights, image_size, view)
    fingerprints = image_fingerprints(image_paths)
    os.makedirs(directory, exist_ok=True)
    stem = cache_stem(directory, settings, image_paths)
    with _turn(stem, log):  # rows another process is computing now are waited for, reused
        return _view_features(stem, settings, fingerprints, image_paths, backbone, weights,
                              image_size, view, batch_size, save_every, get_extractor, log)


@contextlib.contextmanager
def _turn(stem, log=print):
    """An exclusive lock on <stem>.lock while the block runs (released when the process ends,
    however it ends). Without POSIX locks (another OS, a filesystem without them) each
    process computes what it finds missing, as if alone."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(stem + ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"features {os.path.basename(stem)}: another process is computing them; "
                "waiting to reuse its rows")
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError:
            pass
        yield  # closing the file releases the lock


def _view_features(stem, settings, fingerprints, image_paths, backbone, weights, image_size,
                   view, batch_size, save_every, get_extractor, log):
    directory = os.path.dirname(stem)
    known = _known_rows(directory, settings, fingerprints)
    missing = [i for i in range(len(image_paths)) if i not in known]
    name = os.path.basename(stem)
    if not missing:
        log(f"features {name}: all {len(image_paths)} reused from the cache")
        features = np.stack([known[i] for i in range(len(image_paths))])
        _save_if_changed(stem, settings, fingerprints, features)
        return features, 0, len(image_paths)

    log(f"features {name}: {len(known)} reused, computing {len(missing)} "
        f"({backbone}, weights {weights}, {image_size[0]}x{image_size[1]} px, view {view})")
    extractor = (get_extractor() if get_extractor
                 else FeatureExtractor(backbone, weights, image_size))
    started, done, last_save = time.time(), 0, 0
    rows = {}
    batches = _view_dataset(np.asarray(image_paths)[missing], tuple(image_size), view,
                            batch_size)
    for batch in batches:
        values = extractor(batch)
        for offset, value in enumerate(values):
            rows[missing[done + offset]] = value
        done += len(values)
        if done - last_save >= save_every or done == len(missing):
            _save_partial(stem, settings, fingerprints, {**known, **rows})
            last_save = done
            rate = done / max(time.time() - started, 1e-9)
            log(f"features {view}: {done}/{len(missing)} images ({rate:.1f} img/s)")
    features = np.stack([known[i] if i in known else rows[i] for i in range(len(image_paths))])
    return features, len(missing), len(known)


def _save_partial(stem, settings, fingerprints, rows):
    if not rows:
        return
    dim = len(next(iter(rows.values())))
    features = np.zeros((len(fingerprints), dim), np.float32)
    images = []
    for index, fingerprint in enumerate(fingerprints):
        if index in rows:
            features[index] = rows[index]
        images.append(fingerprint if index in rows else None)
    _save(stem, {"settings": settings, "images": images}, features)


def _save_if_changed(stem, settings, fingerprints, features):
    """Writes this image list's own file when its rows were borrowed from other files."""
    key, _ = _load(stem)
    if key is None or key.get("settings") != settings or key["images"] != fingerprints:
        _save(stem, {"settings": settings, "images": fingerprints}, features)


@dataclasses.dataclass
class ViewFeatures:
    views: dict  # view name -> (num_images, feature_dim) float32
    computed: int  # image-views computed in this call
    reused: int  # image-views read from the cache


def per_view(directory, image_paths, backbone, weights, image_size, views=VIEWS, *,
             batch_size=32, extractor_model=None, log=print):
    """Pooled backbone features of `image_paths` for each of `views` (see the module
    docstring), each read from the cache under `directory` or computed and stored.
    `extractor_model`: the extraction_backbone to compute missing rows with (default: one is
    built, once, only when a row is missing)."""
    views = tuple(views)
    if not views or len(set(views)) != len(views):
        raise ValueError(f"views must be distinct names from {VIEWS}, got {views}")
    for view in views:
        settings_key(backbone, weights, image_size, view)  # an unknown view fails before work
    built = []

    def get_extractor():  # one backbone for all views, built only when something is missing
        if not built:
            built.append(FeatureExtractor(backbone, weights, image_size, model=extractor_model))
        return built[0]

    values, computed, reused = {}, 0, 0
    for view in views:
        values[view], new, old = view_features(directory, image_paths, backbone, weights,
                                               image_size, view, batch_size=batch_size,
                                               get_extractor=get_extractor, log=log)
        computed, reused = computed + new, reused + old
    return ViewFeatures(values, computed, reused)


def features(directory, image_paths, backbone, weights, image_size, views=VIEWS, *,
             batch_size=32, log=print):
    """Pooled backbone features of `image_paths`, averaged over `views` (see the module
    docstring); each view is read from the cache under `directory` or computed and stored."""
    result = per_view(directory, image_paths, backbone, weights, image_size, views,
                      batch_size=batch_size, log=log)
    total = sum(value.astype(np.float64) for value in result.views.values())
    return FeatureResult((total / len(result.views)).astype(np.float32), result.computed,
                         result.reused)
