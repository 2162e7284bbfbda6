"""Two-phase fine-tuning (--finetune_epochs): what --unfreeze makes trainable, and the switch
from the heads phase, which starts from the best heads and keeps selecting over both phases."""

import csv
import json
import os
import re

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import keras
import numpy as np
import pytest

from cfimage.catalogue import reader
from cfimage.stage2 import cached, callbacks, data, features, trainer
from cfimage.stage2 import model as model_lib
from tests.stage2.test_cached import BACKBONE, CF_DIM, SIZE, make_catalogue, quiet, setup_run


@pytest.fixture(scope="module")
def catalogue_root(tmp_path_factory):
    return make_catalogue(tmp_path_factory)


def trainable_layers(backbone):
    return {layer.name for layer in backbone.layers if layer.trainable_weights}


def learnable_layers(backbone, pattern=""):
    """Layers whose name matches `pattern` and that have variables a fit can train (whatever
    their trainable flag), BatchNormalization excluded."""
    return {layer.name for layer in backbone.layers
            if re.match(pattern, layer.name) and any(w.trainable for w in layer.weights)
            and not isinstance(layer, keras.layers.BatchNormalization)}


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_top_blocks_unfreezes_only_those_blocks_and_never_batchnorm(name):
    backbone = model_lib.build_backbone(name, "none", (32, 32, 3))
    backbone.trainable = False
    assert model_lib.unfreeze(backbone, "top_blocks:2") == ["block6d", "block7a"]
    # Every convolution of those blocks, and the head convolution; nothing else.
    assert trainable_layers(backbone) == learnable_layers(backbone, r"block6d_|block7a_|top_")
    assert {"block7a_project_conv", "block6d_expand_conv", "top_conv"} <= trainable_layers(
        backbone)

    blocks = model_lib.unfreeze(backbone, "all")
    assert len(blocks) == 16 and blocks[0] == "block1a"
    assert trainable_layers(backbone) == learnable_layers(backbone)
    assert "stem_conv" in trainable_layers(backbone)
    assert not any(isinstance(backbone.get_layer(n), keras.layers.BatchNormalization)
                   for n in trainable_layers(backbone))
    with pytest.raises(ValueError, match="has 16 blocks; use top_blocks:1..16 or all"):
        model_lib.unfreeze(backbone, "top_blocks:17")


@pytest.mark.slow  # trains a cached run first (about 20 s here)
def test_the_switch_loads_the_best_heads_and_saves_the_whole_model(catalogue_root, tmp_path):
    catalogue = reader.load_catalogue(catalogue_root)
    rows = np.arange(12)
    paths = catalogue.image_paths[rows]
    backbone = features.extraction_backbone(BACKBONE, "none", SIZE)
    plain = features.per_view(str(tmp_path / "cache"), paths, BACKBONE, "none", SIZE,
                              ("plain",), log=quiet).views["plain"]
    keras.utils.set_random_seed(2)
    heads = model_lib.build_heads(plain.shape[1], catalogue.num_classes, True, CF_DIM)
    serving = model_lib.compose(backbone, heads)
    # The best phase-1 epoch's heads, as BestCheckpoint leaves them; then the heads move on.
    path = str(tmp_path / "best.weights.h5")
    heads.save_weights(path)
    best_heads = [w.copy() for w in heads.get_weights()]
    labels = catalogue.labels[rows]
    best_map = cached.validation_map(heads, plain, labels, catalogue.label_names)
    with open(str(tmp_path / "best.json"), "w") as f:
        json.dump({"val_map": best_map, "epoch": 3}, f)
    heads.set_weights([w + 0.5 for w in best_heads])
    assert cached.validation_map(heads, plain, labels, catalogue.label_names) != best_map

    targets = data.pack_targets(labels, np.ones(len(rows), bool),
                                np.zeros((len(rows), CF_DIM), np.float32),
                                np.ones(len(rows), np.float32))
    validation = data.make_dataset(paths, targets, SIZE, 5, training=False)
    lines = []
    start = cached.start_finetune(heads, serving, callbacks.BestCheckpoint(path), validation,
                                  labels, catalogue.label_names, log=lines.append)

    for actual, expected in zip(heads.get_weights(), best_heads):
        np.testing.assert_array_equal(actual, expected)  # exactly the best heads
    assert abs(start - best_map) < 1e-6  # the same validation mAP, now through the backbone
    assert f"heads of epoch 3: validation mAP {best_map:.4f} on cached features" in lines[0]
    # The best checkpoint is now the whole model: it loads into a fresh composed model.
    fresh = model_lib.compose(model_lib.build_backbone(BACKBONE, "none", (*SIZE, 3)),
                              model_lib.build_heads(plain.shape[1], catalogue.num_classes,
                                                    True, CF_DIM))
    fresh.load_weights(path)
    pixels = np.concatenate([x.numpy() for x, _ in validation])
    np.testing.assert_allclose(fresh.predict(pixels, verbose=0)["labels"],
                               heads.predict(plain, verbose=0)["labels"], rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # traces a whole backbone's training step (about a minute here)
def test_two_phases_select_over_both_and_train_only_the_unfrozen_blocks(catalogue_root,
                                                                        tmp_path):
    catalogue, stage2_inputs, stage2, runtime = setup_run(
        catalogue_root, str(tmp_path / "run"), "--epochs=2", "--finetune_epochs=1",
        "--unfreeze=top_blocks:1", "--finetune_learning_rate=1e-3")
    lines = []
    result = trainer.train(catalogue, stage2_inputs, CF_DIM, stage2, runtime, log=lines.append)
    start = next(line for line in lines if line.startswith("fine-tuning starts from"))
    cached_map, through_backbone = re.findall(r"validation mAP ([\d.]+) on cached features, "
                                              r"([\d.]+) through the backbone", start)[0]
    assert cached_map == through_backbone
    assert result.model is result.serving_model  # evaluated through the backbone
    assert result.summary["unfrozen_blocks"] == ["block7a"]
    backbone = result.model.layers[1]
    assert trainable_layers(backbone) == learnable_layers(backbone, r"block7a_|top_")
    # Fine-tuning's epoch continues the heads phase's numbering; selection spans both.
    with open(os.path.join(runtime.outdir, "history_finetune.csv")) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["2"]  # 0-based: epoch 3
    assert result.best.best_epoch in (1, 2, 3)
    assert result.summary["best_phase"] == ("finetune" if result.best.best_epoch == 3
                                            else "heads")
    result.model.load_weights(result.best.path)  # the whole model, whichever phase won
