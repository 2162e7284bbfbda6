r"""Writes a catalogue as sharded TFRecords of decoded, resized images
(cfimage/stage2/tfrecords.py).

    python scripts/make_tfrecords.py --catalogue=/data/my_shop --image_size=224 \
        --num_shards=64 --out=gs://my-bucket/my_shop_224
    python -m cfimage.train --catalogue=/data/my_shop --image_size=224 \
        --tfrecords='gs://my-bucket/my_shop_224/items-*'

(from the repository root with cfimage installed). Each image is decoded once, with
`data.decode_and_resize` at --image_size, and stored as raw uint8 pixels with the item's packed
targets (labels + labelled flag; CF target + weight from --cf_embeddings, scaled like train.py
does, or weight 0 without it). Shards are read in parallel (100-200 MB each is a good size;
under --strategy=multi_worker each worker reads all shards and keeps its share of every
batch). --out is a local folder or anything tf.io.gfile writes (gs://...).
Unreadable images stop the script with the file's name: fix them or drop their rows first.
"""

import os

import cfimage  # noqa: F401  (sets the environment before TensorFlow is imported)
import numpy as np
from absl import app, flags

from cfimage.catalogue import reader as catalogue_lib
from cfimage.errors import UserError
from cfimage.stage1 import embedding_files
from cfimage.stage2 import cf_targets as cf_targets_lib
from cfimage.stage2 import data
from cfimage.stage2 import tfrecords

FLAGS = flags.FLAGS
flags.DEFINE_string("catalogue", None, "Catalogue directory (items.csv, interactions.csv).",
                    required=True)
flags.DEFINE_string("out", None, "Output folder (local or gs://...).", required=True)
flags.DEFINE_string("image_size", "64", "N or HxW: must equal train.py's --image_size.")
flags.DEFINE_integer("num_shards", 16, "Number of shards (read in parallel while training).")
flags.DEFINE_string("cf_embeddings", None, "Optional item vectors (.npz/.csv) whose scaled "
                    "targets are stored with each item (training uses its own).")
flags.DEFINE_float("cf_target_scale", 0.5, "As train.py's --cf_target_scale.")
flags.DEFINE_string("items_file", "items.csv", "Items file inside the catalogue.")
flags.DEFINE_enum("unknown_interaction_items", "keep", ["fail", "keep", "drop"],
                  "As train.py's flag (interactions are only read for validation here).")


def main(argv):
    del argv
    parts = [int(p) for p in FLAGS.image_size.lower().split("x")]
    image_size = tuple(parts * 2 if len(parts) == 1 else parts)
    spec = catalogue_lib.CatalogueSpec(
        items_file=FLAGS.items_file, unknown_interaction_items=FLAGS.unknown_interaction_items)
    try:
        catalogue = catalogue_lib.load_catalogue(FLAGS.catalogue, spec)
    except catalogue_lib.CatalogueError as error:
        raise SystemExit(f"make_tfrecords: error: {error}")
    print(catalogue_lib.describe(catalogue), flush=True)
    n = catalogue.num_items
    if FLAGS.cf_embeddings:
        ids, vectors = embedding_files.load_embeddings(FLAGS.cf_embeddings)
        vectors, has_vector = embedding_files.align_embeddings(catalogue.item_ids, ids, vectors,
                                                               FLAGS.cf_embeddings)
        # Every item's vector fits the transform here; a training run packs its own targets
        # (fit on its training items, cfimage/stage2/cf_targets.py) by item_id.
        cf_targets, _ = cf_targets_lib.fit(vectors, has_vector, np.arange(n), "standardised",
                                           FLAGS.cf_target_scale)
    else:
        has_vector = np.zeros(n, bool)
        cf_targets = np.zeros((n, 1), np.float32)
    targets = data.pack_targets(catalogue.labels, catalogue.labelled, cf_targets,
                                has_vector.astype(np.float32))
    try:
        paths = tfrecords.write_tfrecords(
            FLAGS.out, catalogue.item_ids, catalogue.image_paths, targets, image_size,
            catalogue.label_names, num_shards=FLAGS.num_shards,
            log=lambda message: print(message, flush=True))
    except UserError as error:  # an image that cannot be decoded, named with its item
        raise SystemExit(f"make_tfrecords: error: {error}")
    print(f"{n} items in {len(paths)} shards; train with "
          f"--image_size={FLAGS.image_size} --tfrecords='{os.path.join(FLAGS.out, 'items-*')}'")


if __name__ == "__main__":
    app.run(main)
