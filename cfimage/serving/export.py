"""Export: a SavedModel that stock TensorFlow Serving loads.

Layout: <export_base>/<model_name>/<version>/ with an integer version, as TF
Serving expects. The version directory is written under a temporary name and
renamed into place only when complete, so a server polling the directory never
sees a half-written version.

Signatures (all stock TensorFlow ops; the CF tables are tf.Variables inside the
SavedModel, so TF Serving needs nothing but the directory):

  serving_default  images string [B] (encoded JPEG/PNG/GIF/BMP/WebP bytes)
                   -> scores float [B, C], label_names string [B, C],
                      top_k_labels string [B, k], top_k_scores float [B, k]
                      (k = min(5, C))
  predict_pixels   pixels float [B, H, W, 3], RGB 0-255 -> scores, label_names.
                   Any H, W: other sizes are resized like the training images.
  embed            images -> embedding float [B, d]: the predicted two-tower item
                   vector, in the two-tower's own space (target scaling undone)
  similar_items    images -> item_ids string [B, k], scores float [B, k]
  audience         images -> user_ids string [B, k], scores float [B, k]
  classify_items   (hybrid models only) images string [B], item_ids string [B]
                   -> the outputs of serving_default, from the image and the item's own
                   CF vector, looked up by id in the catalogue table inside the graph;
                   an empty or unknown id gives the image-only scores (= serving_default).

A hybrid model (cfimage/stage2/hybrid.py) takes the CF input too; every other signature feeds
it zeros, which is exactly its image path. classify_items exists only for hybrid models: a
model without the CF input would ignore the ids, and a client asking for them is better told
(cfimage.json lists the signatures; "hybrid" says which kind of model it is).

The images go through `data.decode_and_resize`, the training preprocessing.
`similar_items` and `audience` rank by dot product, the score the two-tower model
was trained with (see `_top_k_by_dot`). The CF signatures are exported only when
the tables they need are given; what was left out is logged.

assets.extra/ holds labels.txt, cfimage.json (image size, labels, signatures,
metadata) and tf_serving_warmup_requests: one PredictRequest per signature on a
small generated image, which TF Serving replays at load so that the first real
request does not pay for graph tracing.
"""

import errno
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
# A declared dependency (setup.cfg); imported here, not at export time, so that a
# missing install stops a training run at its start rather than after training.
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from cfimage.serving.tables import CFTables, check_table, top_k_by_dot
from cfimage.stage2 import data
from cfimage.stage2 import model as model_lib

NUM_TOP_LABELS = 5
WARMUP_FILE = "tf_serving_warmup_requests"


def next_version(model_dir):
    """1 + the highest integer version already in `model_dir` (1 when none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(name) for name in os.listdir(model_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def publish_version(tmp_dir, model_dir, version, fixed=False, log=print):
    """Renames the finished export `tmp_dir` to `<model_dir>/<version>`; returns that path.

    Two exports into one model directory (two runs sharing --export_dir) can both choose the
    same next version. rename(2) refuses a target that is a non-empty directory, so the
    later one takes the next free version (logged) instead of failing or mixing two models;
    a version given explicitly (`fixed`) is never changed.
    """
    while True:
        final_dir = os.path.join(model_dir, str(version))
        try:
            os.rename(tmp_dir, final_dir)
            return final_dir
        except OSError as error:
            if fixed or error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
        taken, version = version, max(version + 1, next_version(model_dir))
        log(f"export: version {taken} was written by another export meanwhile; this one is "
            f"version {version}")


def remove_stale_temporaries(model_dir, log=print):
    """Deletes `.tmp-<version>-<pid>` directories whose export process no longer runs (a
    killed export leaves one; TF Serving never loads it, but it takes disk space)."""
    if not os.path.isdir(model_dir):
        return []
    removed = []
    for name in sorted(os.listdir(model_dir)):
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != ".tmp" or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        try:
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except PermissionError:  # a live process of another user
            alive = True
        if not alive:
            shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
            removed.append(name)
    if removed:
        log(f"export: removed {len(removed)} temporary directories of interrupted exports: "
            f"{', '.join(removed)}")
    return removed


def _not_empty(batch, name):
    """InvalidArgument for a request with no examples, which would otherwise fail deep in the
    graph with "Incompatible shapes"."""
    return tf.debugging.assert_positive(
        tf.shape(batch)[0], message=f"empty batch: the request has no {name}; send at least one")


def _resize_pixels(pixels, image_size):
    """A pixel batch at the training size: other sizes resized as decode_and_resize does."""
    height, width = image_size

    def resize():
        resized = tf.image.resize(pixels, image_size, method="bilinear", antialias=True)
        return tf.clip_by_value(tf.round(resized), 0.0, 255.0)

    shape = tf.shape(pixels)
    same = tf.logical_and(tf.equal(shape[1], height), tf.equal(shape[2], width))
    pixels = tf.cond(same, lambda: pixels, resize)
    return tf.ensure_shape(pixels, [None, height, width, 3])


def _warmup_records(model_name, signatures, image_size, item_id=""):
    """Serialized PredictionLog records: one request per signature, one small image each
    (classify_items: with `item_id`, a known id, so that the lookup runs)."""
    height, width = image_size
    ramp = np.linspace(0, 255, height * width * 3).reshape(height, width, 3).astype(np.uint8)
    image = tf.io.encode_jpeg(ramp).numpy()
    records = []
    for name, input_names in signatures.items():
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=name))
        for input_name in input_names:
            if input_name == "images":
                tensor = tf.make_tensor_proto([image], dtype=tf.string)
            elif input_name == "item_ids":
                tensor = tf.make_tensor_proto([item_id.encode()], dtype=tf.string)
            else:
                tensor = tf.make_tensor_proto(ramp[None].astype(np.float32))
            request.inputs[input_name].CopyFrom(tensor)
        entry = prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(entry.SerializeToString())
    return records


def export_saved_model(model, label_names, image_size, export_base, model_name, version=None,
                       metadata=None, cf_scaling=None, item_ids=None, item_vectors=None,
                       user_ids=None, user_vectors=None, top_k=10, log=print):
    """Writes the serving SavedModel and returns its version directory.

    `model` has outputs {"labels", "cf"} (and the inputs "pixels" and, hybrid models,
    "cf_input"); `cf` predicts scaled targets, and
    `cf_scaling` ({"mean": list, "scale": float}, from `data.scale_cf_targets`)
    maps them back. `embed` needs `cf_scaling`; `similar_items` also needs the
    catalogue table (`item_ids`, `item_vectors`), `audience` the two-tower user
    table (`user_ids`, `user_vectors`). Signatures whose inputs are missing are
    left out and logged. `top_k` results are returned by those two. `classify_items` (hybrid
    models) needs `cf_scaling` and the catalogue table.
    """
    model_dir = os.path.join(export_base, model_name)
    fixed = version is not None
    version = next_version(model_dir) if version is None else int(version)
    final_dir = os.path.join(model_dir, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(f"export version already exists: {final_dir}")

    image_size = tuple(int(s) for s in image_size)
    label_names = [str(name) for name in label_names]
    cf_dim = int(model.output["cf"].shape[-1])
    # A target transform with a matrix (--cf_target=pca_whiten:K) maps the K outputs back to
    # vectors of the tables' dimension: vector = cf · matrix · scale + mean.
    cf_matrix = (np.asarray(cf_scaling["matrix"], np.float32)
                 if cf_scaling is not None and "matrix" in cf_scaling else None)
    if cf_matrix is not None:
        if cf_matrix.ndim != 2 or cf_matrix.shape[0] != cf_dim:
            raise ValueError(f"cf_scaling's matrix must have {cf_dim} rows (the cf output), "
                             f"got shape {cf_matrix.shape}")
        cf_dim = cf_matrix.shape[1]
    tables = {kind: table for kind, table in [
        ("item", check_table("item", item_ids, item_vectors, cf_dim)),
        ("user", check_table("user", user_ids, user_vectors, cf_dim))] if table is not None}
    hybrid = model_lib.is_hybrid(model)
    if tables and cf_scaling is None:
        raise ValueError("CF tables given without cf_scaling: the model's cf output is in "
                         "scaled target space and cannot be compared with them")
    if cf_scaling is not None:
        cf_mean = np.asarray(cf_scaling["mean"], dtype=np.float32)
        cf_scale = float(cf_scaling["scale"])
        if cf_mean.shape != (cf_dim,) or not cf_scale > 0:
            raise ValueError(f"cf_scaling needs a mean of length {cf_dim} and a scale > 0, "
                             f"got mean shape {cf_mean.shape} and scale {cf_scale}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")

    names = tf.constant(label_names, dtype=tf.string)
    num_top_labels = min(NUM_TOP_LABELS, len(label_names))
    images_spec = tf.TensorSpec([None], tf.string, name="images")
    classify = hybrid and "item" in tables and cf_scaling is not None
    cf_tables = CFTables(tables, index_items=classify)

    # One traced model call, shared by every signature: one copy in the SavedModel. A hybrid
    # model gets the CF input: zeros (its exact image path) unless classify_items gives one.
    pixels_spec = tf.TensorSpec([None, *image_size, 3], tf.float32)
    if hybrid:
        @tf.function(input_signature=[pixels_spec, tf.TensorSpec([None, cf_dim + 1],
                                                                 tf.float32)])
        def predict_with_cf(pixels, cf_input):
            outputs = model({"pixels": pixels, model_lib.CF_INPUT: cf_input}, training=False)
            return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

        def predict(pixels, cf_input=None):
            if cf_input is None:
                cf_input = tf.zeros([tf.shape(pixels)[0], cf_dim + 1], tf.float32)
            return predict_with_cf(pixels, cf_input)
    else:
        @tf.function(input_signature=[pixels_spec])
        def predict(pixels):
            outputs = model(pixels, training=False)
            return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}

    def predict_images(images, cf_input=None):
        # Bytes that are not an image fail in decode_image with InvalidArgument
        # ("Unknown image file format ..."): the request fails, the server lives on.
        # A header (PNG, GIF, BMP, WebP, JPEG) claiming more than data.MAX_IMAGE_PIXELS
        # fails with InvalidArgument before anything is decoded (a small file can claim a
        # huge image): decode_and_resize checks it, as in training.
        with tf.control_dependencies([_not_empty(images, "images")]):
            pixels = tf.map_fn(lambda b: data.decode_and_resize(b, image_size), images,
                               fn_output_signature=tf.TensorSpec((*image_size, 3), tf.uint8))
        pixels = tf.cast(pixels, tf.float32)
        return predict(pixels) if cf_input is None else predict(pixels, cf_input)

    def with_label_names(scores):
        return {"scores": scores, "label_names": tf.tile(names[None, :], [tf.shape(scores)[0], 1])}

    def embedding(images):
        cf = predict_images(images)["cf"]
        if cf_matrix is not None:
            cf = tf.matmul(cf, cf_matrix)
        return cf * cf_scale + cf_mean

    def label_outputs(scores):
        outputs = with_label_names(scores)
        top_scores, top_index = tf.math.top_k(outputs["scores"], k=num_top_labels)
        return {**outputs, "top_k_labels": tf.gather(names, top_index),
                "top_k_scores": top_scores}

    @tf.function(input_signature=[images_spec])
    def serving_default(images):
        return label_outputs(predict_images(images)["labels"])

    @tf.function(input_signature=[images_spec, tf.TensorSpec([None], tf.string,
                                                             name="item_ids")])
    def classify_items(images, item_ids):
        # One id per image (InvalidArgument otherwise); "" or an id not in the table: zeros.
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.shape(item_ids)[0], tf.shape(images)[0],
                message="classify_items needs one item id per image (\"\" for none)")]):
            cf_input = cf_tables.item_cf_input(item_ids, cf_mean, cf_scale)
        return label_outputs(predict_images(images, cf_input)["labels"])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32,
                                                name="pixels")])
    def predict_pixels(pixels):
        with tf.control_dependencies([_not_empty(pixels, "pixels")]):
            # NaN or inf would give NaN scores: InvalidArgument instead.
            pixels = tf.debugging.check_numerics(
                pixels, "pixels must be finite RGB values (0-255), not NaN or inf")
        return with_label_names(predict(_resize_pixels(pixels, image_size))["labels"])

    @tf.function(input_signature=[images_spec])
    def embed(images):
        return {"embedding": embedding(images)}

    @tf.function(input_signature=[images_spec])
    def similar_items(images):
        ids, scores = top_k_by_dot(embedding(images), cf_tables.item_ids,
                                   cf_tables.item_vectors, min(top_k, len(tables["item"][0])))
        return {"item_ids": ids, "scores": scores}

    @tf.function(input_signature=[images_spec])
    def audience(images):
        ids, scores = top_k_by_dot(embedding(images), cf_tables.user_ids,
                                   cf_tables.user_vectors, min(top_k, len(tables["user"][0])))
        return {"user_ids": ids, "scores": scores}

    endpoints = {"serving_default": serving_default, "predict_pixels": predict_pixels}
    if cf_scaling is None:
        log("export: no cf_scaling, so no embed/similar_items/audience signatures")
    else:
        endpoints["embed"] = embed
        for kind, name, fn, why in [
                ("item", "similar_items", similar_items, "no catalogue item vectors"),
                ("user", "audience", audience,
                 "no two-tower user vectors (stage 1 did not run for these item vectors)")]:
            if kind in tables:
                endpoints[name] = fn
            else:
                log(f"export: signature {name} left out: {why}")
    if classify:
        endpoints["classify_items"] = classify_items
    elif hybrid:
        log("export: signature classify_items left out: no catalogue item vectors or "
            "cf_scaling (serving_default classifies from the image alone)")

    os.makedirs(model_dir, exist_ok=True)
    remove_stale_temporaries(model_dir, log=log)
    tmp_dir = os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(cf_tables)
        for name, fn in endpoints.items():
            archive.add_endpoint(name=name, fn=fn)
        archive.write_out(tmp_dir, verbose=False)

        extra = os.path.join(tmp_dir, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "labels.txt"), "w") as f:
            f.write("\n".join(label_names) + "\n")
        inputs = {name: {"predict_pixels": ["pixels"], "classify_items": ["images", "item_ids"]
                         }.get(name, ["images"]) for name in endpoints}
        known_id = str(tables["item"][0][0]) if "item" in tables else ""
        with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
            for record in _warmup_records(model_name, inputs, image_size, known_id):
                writer.write(record)
        with open(os.path.join(extra, "cfimage.json"), "w") as f:
            json.dump({"image_size": list(image_size), "label_names": label_names,
                       "signatures": list(endpoints), "top_k_labels": num_top_labels,
                       "top_k": top_k, "similarity": "dot", "cf_dim": cf_dim,
                       "hybrid": hybrid, "cf_scaling": None if cf_scaling is None else {
                           "mean": [float(v) for v in cf_mean], "scale": cf_scale},
                       "num_items": len(tables["item"][0]) if "item" in tables else 0,
                       "num_users": len(tables["user"][0]) if "user" in tables else 0,
                       **(metadata or {})}, f, indent=2)
        final_dir = publish_version(tmp_dir, model_dir, version, fixed=fixed, log=log)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final_dir
