"""cfimage/catalogue/tfds_builder.py: build a TFDS dataset from a tiny catalogue, read it back."""

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from cfimage.catalogue import tfds_builder  # noqa: E402,F401  (registers "cfimage_catalogue")


def _catalogue(root):
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((8, 6, 3), 100, np.uint8)).save(root / "images" / "a.jpg")
    Image.fromarray(np.full((5, 7), 50, np.uint8)).save(root / "images" / "b.png")  # greyscale
    Image.fromarray(np.full((4, 4, 4), 200, np.uint8)).save(root / "images" / "c.png")  # RGBA
    (root / "items.csv").write_text(
        "item_id,image,labels\na,images/a.jpg,x|y\nb,images/b.png,y\nc,images/c.png,\n")
    (root / "interactions.csv").write_text(
        "user_id,item_id\nu,a\nu,b\nv,a\nv,not_an_item\n")
    return root


def test_builds_and_reads_back(tmp_path):
    manual_dir = _catalogue(tmp_path / "catalogue")
    data_dir = tmp_path / "tfds"
    builder = tfds.builder("cfimage_catalogue", data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))

    # A fresh builder reads the prepared data, label names included, without the catalogue.
    reread = tfds.builder("cfimage_catalogue", data_dir=str(data_dir))
    assert reread.info.features["labels"].feature.names == ["x", "y"]
    assert reread.info.splits["train"].num_examples == 3
    examples = {ex["item_id"].decode(): ex
                for ex in tfds.as_numpy(reread.as_dataset(split="train"))}
    assert sorted(examples) == ["a", "b", "c"]
    assert examples["a"]["image"].shape == (8, 6, 3)
    assert abs(int(examples["a"]["image"].mean()) - 100) <= 2  # JPEG stored as it was
    np.testing.assert_array_equal(examples["b"]["image"], np.full((5, 7, 3), 50, np.uint8))
    np.testing.assert_array_equal(examples["c"]["image"], np.full((4, 4, 3), 200, np.uint8))
    assert list(examples["a"]["labels"]) == [0, 1] and list(examples["b"]["labels"]) == [1]
    assert list(examples["c"]["labels"]) == []
    assert [examples[i]["num_interactions"] for i in "abc"] == [2, 1, 0]


def test_bad_catalogue_fails_with_the_catalogue_error(tmp_path):
    from cfimage.catalogue.reader import CatalogueError
    manual_dir = _catalogue(tmp_path / "catalogue")
    (manual_dir / "items.csv").write_text("item_id,image,labels\na,images/missing.jpg,x\n")
    builder = tfds.builder("cfimage_catalogue", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(CatalogueError, match="missing.jpg"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
