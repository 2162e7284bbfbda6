"""Export: a SavedModel that stock TensorFlow Serving loads.

Layout: <export_base>/<model_name>/<version>/ with an integer version, as TF
Serving expects. The version directory is written under a temporary name and
renamed into place only when complete, so a server polling the directory never
sees a half-written version.

Signature `serving_default`:
  inputs:  images  string [batch]   encoded JPEG/PNG/GIF/BMP bytes
  outputs: scores  float32 [batch, C]  per-class scores (sigmoid or softmax)
           label_names string [batch, C] the class of each score column
The images go through `data.decode_and_resize`, the training preprocessing.
The label vocabulary is also written to assets.extra/labels.txt.
"""

import json
import os
import shutil

import keras
import tensorflow as tf

from cfimage import data


def next_version(model_dir):
    """1 + the highest integer version already in `model_dir` (1 when none)."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(name) for name in os.listdir(model_dir) if name.isdigit()]
    return max(versions, default=0) + 1


def export_saved_model(model, label_names, image_size, export_base, model_name, version=None,
                       metadata=None):
    """Writes the serving SavedModel and returns its version directory."""
    model_dir = os.path.join(export_base, model_name)
    version = next_version(model_dir) if version is None else int(version)
    final_dir = os.path.join(model_dir, str(version))
    if os.path.exists(final_dir):
        raise FileExistsError(f"export version already exists: {final_dir}")
    os.makedirs(model_dir, exist_ok=True)
    tmp_dir = os.path.join(model_dir, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)

    image_size = tuple(int(s) for s in image_size)
    names = tf.constant(list(label_names), dtype=tf.string)

    def decode_batch(images):
        return tf.map_fn(lambda b: data.decode_and_resize(b, image_size), images,
                         fn_output_signature=tf.TensorSpec((*image_size, 3), tf.uint8))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_images(images):
        pixels = tf.cast(decode_batch(images), tf.float32)
        scores = tf.cast(model(pixels, training=False)["labels"], tf.float32)
        label_names_out = tf.tile(names[None, :], [tf.shape(scores)[0], 1])
        return {"scores": scores, "label_names": label_names_out}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=serve_images)
    archive.write_out(tmp_dir, verbose=False)

    extra = os.path.join(tmp_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, "labels.txt"), "w") as f:
        f.write("\n".join(label_names) + "\n")
    with open(os.path.join(extra, "cfimage.json"), "w") as f:
        json.dump({"image_size": list(image_size), "label_names": list(label_names),
                   **(metadata or {})}, f, indent=2)
    os.rename(tmp_dir, final_dir)
    return final_dir
