"""Cached-feature training (cfimage/stage2/cached.py): the heads on cached features predict
what the composed (exported) model and an end-to-end model with the same weights predict;
the cache is reused and invalidated; every arm trains through the shared trainer code."""

import json
import os
import shutil

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from cfimage import config as config_lib
from cfimage import train_flags
from cfimage.catalogue import demo, reader
from cfimage.stage2 import cached, data, features, trainer
from cfimage.stage2 import inputs as inputs_lib
from cfimage.stage2 import model as model_lib
from cfimage.stage2 import runtime as runtime_lib

# EfficientNet-Lite0 without weights: its random features are of order 1 (a random B0's are
# of order 1e-6, which would make every prediction the same and the comparisons empty).
BACKBONE = "efficientnet_lite0"
SIZE = (32, 32)
CF_DIM = 4


def quiet(_):
    pass


def make_catalogue(tmp_path_factory):
    """A 40-item demo catalogue of 32x32 images."""
    root = tmp_path_factory.mktemp("catalogue")
    demo.make_demo_catalogue(str(root), seed=5, num_items=40, num_users=20, image_size=32,
                             interactions_per_user=10)
    return str(root)


@pytest.fixture(scope="module")
def catalogue_root(tmp_path_factory):
    return make_catalogue(tmp_path_factory)


def run_config(root, workdir, *argv):
    """(RunConfig, catalogue, Runtime) of cfimage.train's flags `argv` on cached features."""
    flag_values = flags.FlagValues()
    train_flags.define_flags(flag_values)
    flag_values(["cfimage.train", f"--catalogue={root}", f"--workdir={workdir}",
                 f"--backbone={BACKBONE}", "--image_size=32", "--batch_size=8", "--epochs=1",
                 "--train_backbone=false", *argv])
    config = config_lib.from_flags(flag_values)
    catalogue = reader.load_catalogue(root, config.catalogue.spec)
    return config, catalogue, runtime_lib.start(config.stage2, workdir, log=quiet)


def setup_run(root, workdir, *argv):
    """(catalogue, Stage2Inputs, Stage2Config, Runtime) of cfimage.train's flags `argv`, with
    random CF vectors (stage 1 is not what these tests are about)."""
    config, catalogue, runtime = run_config(root, workdir, *argv)
    vectors = np.random.default_rng(0).normal(size=(catalogue.num_items, CF_DIM))
    has_vector = np.arange(catalogue.num_items) % 5 != 0  # some items have no vector
    stage2_inputs = inputs_lib.prepare(
        catalogue, vectors, has_vector, config.stage2, 0.5, "auto", runtime.global_batch,
        runtime.outdir, count_interactions=lambda: np.arange(catalogue.num_items) % 7 + 1,
        log=quiet)
    return catalogue, stage2_inputs, config.stage2, runtime


def decoded(paths):
    return np.stack([data.decode_and_resize(tf.io.read_file(p), SIZE).numpy()
                     for p in paths]).astype(np.float32)


def assert_same(actual, expected):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * scale)


def test_cached_and_end_to_end_models_give_the_same_predictions(catalogue_root, tmp_path):
    catalogue = reader.load_catalogue(catalogue_root)
    paths = catalogue.image_paths[:12]
    backbone = features.extraction_backbone(BACKBONE, "none", SIZE)
    extracted = features.per_view(str(tmp_path / "cache"), paths, BACKBONE, "none", SIZE,
                                  ("plain",), log=quiet)
    keras.utils.set_random_seed(1)
    heads = model_lib.build_heads(extracted.views["plain"].shape[1], 3, True, CF_DIM,
                                  adapter_units=8)
    serving = model_lib.compose(backbone, heads)
    # An end-to-end model (one flat network) given the same weights, layer by layer.
    end_to_end = model_lib.build_model(BACKBONE, "none", SIZE, 3, True, CF_DIM, adapter_units=8)
    end_to_end.layers[1].set_weights(backbone.get_weights())
    for layer in heads.layers:
        if layer.weights:
            end_to_end.get_layer(layer.name).set_weights(layer.get_weights())

    from_cache = heads.predict(extracted.views["plain"], verbose=0)
    pixels = decoded(paths)
    for model in (serving, end_to_end):
        from_images = model.predict(pixels, verbose=0)
        for output in ("labels", "cf"):
            assert_same(from_cache[output], from_images[output])
    # Not a comparison of constants: the images' outputs spread ten times wider than the tolerance
    # of `assert_same` (an absolute floor would depend on the CPU's float kernels).
    for output in ("labels", "cf"):
        spread = from_cache[output].std(axis=0).min()
        assert spread > 10 * 1e-4 * float(np.abs(from_cache[output]).max()), output


@pytest.fixture(scope="module")
def trained(catalogue_root, tmp_path_factory):
    """One cached multitask run (1 epoch, adapter, sqrt-free) through trainer.train."""
    workdir = str(tmp_path_factory.mktemp("cached_run"))
    catalogue, stage2_inputs, stage2, runtime = setup_run(catalogue_root, workdir,
                                                          "--adapter_units=8")
    lines = []
    result = trainer.train(catalogue, stage2_inputs, CF_DIM, stage2, runtime, log=lines.append)
    return catalogue, stage2_inputs, stage2, result, lines


def test_a_cached_run_trains_the_heads_and_its_serving_model_predicts_the_same(trained):
    catalogue, stage2_inputs, stage2, result, lines = trained
    assert stage2_inputs.train is None  # no image pipeline without fine-tuning
    assert result.summary["features_computed"] == 2 * catalogue.num_items  # plain and flip
    assert result.summary["features_reused"] == 0
    assert result.summary["adapter_units"] == 8 and result.summary["best_phase"] == "heads"
    assert result.model.name == "cfimage_heads"
    assert result.model.get_layer("adapter_dense").units == 8
    assert result.best.best_epoch == 1 and os.path.isfile(result.best.path)
    assert any("stage 2 (multitask, heads on cached features): 1 epochs" in line
               for line in lines)
    # The test split as evaluated (plain features) is what the serving model gives on images.
    result.model.load_weights(result.best.path)
    test_rows = stage2_inputs.splits["test"]
    from_cache = result.model.predict(result.test, verbose=0)["labels"]
    from_images = result.serving_model.predict(decoded(catalogue.image_paths[test_rows]),
                                               verbose=0)["labels"]
    assert_same(from_cache, from_images)
    # Not an empty comparison: the scores differ between images (after one epoch of random
    # heads some class may still spread less than 1e-3; seen under load: 8e-4).
    assert from_images.std(axis=0).max() > 1e-3


def test_training_draws_both_views_and_evaluation_reads_the_plain_one():
    view_features = np.stack([np.zeros((6, 2)), np.ones((6, 2))], axis=1)  # plain 0, flip 1
    targets = {"labels": np.zeros((6, 2), np.float32)}
    evaluation = np.concatenate([x.numpy() for x, _ in cached.feature_dataset(
        view_features, targets, 4, training=False)])
    assert evaluation.shape == (6, 2) and not evaluation.any()
    training = cached.feature_dataset(view_features, targets, 6, training=True, seed=3)
    drawn = [next(iter(training))[0].numpy()[:, 0] for _ in range(5)]
    assert 0.2 < np.mean(drawn) < 0.8  # both views, in one epoch and across epochs
    assert len({tuple(d) for d in drawn}) > 1  # a new draw every epoch


def test_the_cache_is_reused_and_a_changed_image_is_recomputed(trained, tmp_path):
    catalogue, _, stage2, _, _ = trained
    backbone = features.extraction_backbone(BACKBONE, "none", SIZE)
    view_features, counts = cached.extract(catalogue, stage2, backbone, log=quiet)
    assert (counts.computed, counts.reused) == (0, 2 * catalogue.num_items)  # the run's cache
    assert view_features.shape == (catalogue.num_items, 2, 1280)

    # A copy of the images in another cache: one image rewritten -> only its two views.
    images = tmp_path / "images"
    shutil.copytree(os.path.dirname(catalogue.image_paths[0]), images)
    paths = [str(images / os.path.basename(p)) for p in catalogue.image_paths]
    cache = str(tmp_path / "cache")
    first = features.per_view(cache, paths, BACKBONE, "none", SIZE, cached.VIEWS, log=quiet)
    assert first.computed == 2 * len(paths)
    demo.write_png(paths[3], np.full((32, 32, 3), 200, np.uint8))
    second = features.per_view(cache, paths, BACKBONE, "none", SIZE, cached.VIEWS, log=quiet)
    assert (second.computed, second.reused) == (2, 2 * len(paths) - 2)
    assert not np.allclose(second.views["plain"][3], first.views["plain"][3])
    np.testing.assert_array_equal(second.views["flip"][4], first.views["flip"][4])


def test_a_cache_of_another_network_is_refused(trained):
    catalogue, _, stage2, _, _ = trained
    backbone = features.extraction_backbone(BACKBONE, "none", SIZE)
    plain = features.per_view(stage2.feature_cache, catalogue.image_paths, BACKBONE, "none",
                              SIZE, ("plain",), log=quiet).views["plain"]
    cached.check_backbone(backbone, catalogue.image_paths, plain, SIZE, "cache")
    with pytest.raises(cached.UserError, match="were not computed by this backbone"):
        cached.check_backbone(backbone, catalogue.image_paths, plain * 1.5, SIZE, "cache")


# The fast tier trains the baseline (multitask: the `trained` fixture); the other arms, 5-10 s
# each, run in the slow tier (the inner loop stays under 3 minutes).
@pytest.mark.parametrize("arm", ["image_only"] + [
    pytest.param(arm, marks=pytest.mark.slow)
    for arm in ("multitask_sqrt", "multitask_loss", "two_stage", "contrastive")])
def test_every_arm_trains_on_cached_features(catalogue_root, trained, tmp_path, arm):
    _, _, first_stage2, _, _ = trained
    catalogue, stage2_inputs, stage2, runtime = setup_run(
        catalogue_root, str(tmp_path / "run"), f"--arm={arm}", "--pretrain_epochs=1",
        f"--feature_cache={first_stage2.feature_cache}", "--label_ratio=0.5")
    lines = []
    result = trainer.train(catalogue, stage2_inputs, CF_DIM, stage2, runtime, log=lines.append)
    assert result.summary["features_computed"] == 0  # shared cache
    assert any(f"stage 2 ({arm}, heads on cached features)" in line for line in lines)
    assert (arm == "two_stage") == any("two-stage: phase 1, 1 epochs" in line
                                       for line in lines)
    with open(os.path.join(runtime.outdir, "checkpoints", "best.json")) as f:
        assert json.load(f)["epoch"] == 1
    scores = result.model.predict(result.test, verbose=0)["labels"]
    assert np.all(np.isfinite(scores))
