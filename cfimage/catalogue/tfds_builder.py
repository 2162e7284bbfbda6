"""A TensorFlow Datasets builder for a cfimage catalogue (README, "Your own data").

The catalogue directory (items.csv, the images, interactions.csv) is TFDS' manual_dir; it is
validated by `cfimage.catalogue.reader.load_catalogue` (interactions on items outside items.csv are
allowed) and turned into one split, `train`, with every item:

  image             uint8 (H, W, 3); the original file bytes when the image is a JPEG or PNG
                    in RGB, otherwise converted to RGB and stored as PNG
  item_id           string
  labels            Sequence(ClassLabel): the item's labels (empty = unlabelled); the names
                    are the catalogue's sorted label vocabulary
  num_interactions  int64: interactions on the item in interactions.csv

    import cfimage.catalogue.tfds_builder  # registers "cfimage_catalogue"
    import tensorflow_datasets as tfds
    builder = tfds.builder("cfimage_catalogue", data_dir="/data/tfds")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/data/catalogues/movielens"))
    dataset = builder.as_dataset(split="train")

The label names are only known once the catalogue is read, so `_info` declares the ClassLabel
without names and `_split_generators` sets them; a prepared dataset restores them from its
dataset_info on disk. One data_dir (or builder config name) per catalogue.
"""

import io
import os

import numpy as np
import tensorflow_datasets as tfds

from cfimage.catalogue.reader import CatalogueSpec, load_catalogue

PASS_THROUGH_FORMATS = ("JPEG", "PNG")


def _image_feature_value(path):
    """The path itself when TFDS can store the file as it is, else an RGB uint8 array."""
    from PIL import Image
    with open(path, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as image:
        if image.format in PASS_THROUGH_FORMATS and image.mode == "RGB":
            return path
        return np.asarray(image.convert("RGB"))


class CfimageCatalogue(tfds.core.GeneratorBasedBuilder):
    """A cfimage catalogue directory as a TFDS image-classification dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Pass the catalogue directory (items.csv, images, interactions.csv; see the cfimage "
        "README, 'Your own data', and scripts/prepare_*.py) as manual_dir: "
        "download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=DIR)).")
    # How the catalogue is read; subclass to change column names or label filtering.
    CATALOGUE_SPEC = CatalogueSpec(unknown_interaction_items="keep")

    def _info(self):
        return self.dataset_info_from_configs(
            description="Items of a cfimage catalogue: image, id, multi-label labels.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "item_id": tfds.features.Text(),
                "labels": tfds.features.Sequence(tfds.features.ClassLabel()),
                "num_interactions": tfds.features.Scalar(dtype=np.int64),
            }),
            supervised_keys=("image", "labels"),
        )

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        catalogue = load_catalogue(root, self.CATALOGUE_SPEC)
        self.info.features["labels"].feature.names = list(catalogue.label_names)
        return {"train": self._generate_examples(catalogue)}

    def _generate_examples(self, catalogue):
        counts = catalogue.interactions["item_id"].value_counts()
        for index, item_id in enumerate(catalogue.item_ids):
            labels = [catalogue.label_names[c] for c in catalogue.labels[index].nonzero()[0]]
            yield item_id, {
                "image": _image_feature_value(catalogue.image_paths[index]),
                "item_id": item_id,
                "labels": labels,
                "num_interactions": int(counts.get(item_id, 0)),
            }
