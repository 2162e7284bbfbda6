"""Stage 2's inputs (cfimage/stage2/inputs.py) with the CF target and loss options: the target
transform is fit on the training split and stored in the workdir, the loss of --cf_loss is
compiled, masks hold, and the heads train on cached features (--train_backbone=false) with
each option."""

import json
import os

import numpy as np
import pytest

from cfimage.errors import UserError
from cfimage.stage2 import cf_targets, losses, trainer
from cfimage.stage2 import inputs as inputs_lib
from tests.stage2.test_cached import make_catalogue, quiet, run_config

CF_DIM = 6


@pytest.fixture(scope="module")
def catalogue_root(tmp_path_factory):
    return make_catalogue(tmp_path_factory)


USERS = np.random.default_rng(1).normal(size=(15, CF_DIM))


def prepare(root, workdir, *argv, users=USERS, counts=None):
    config, catalogue, runtime = run_config(root, workdir, *argv)
    vectors = np.random.default_rng(0).normal(size=(catalogue.num_items, CF_DIM)) + 3.0
    has_vector = np.arange(catalogue.num_items) % 5 != 0  # some items have no vector
    lines = []
    stage2_inputs = inputs_lib.prepare(
        catalogue, vectors, has_vector, config.stage2, config.stage1.cf_target_scale, "auto",
        runtime.global_batch, runtime.outdir,
        count_interactions=counts or (lambda: np.arange(catalogue.num_items) % 7 + 1),
        log=lines.append, cf_target=config.stage1.cf_target, load_users=lambda: users)
    return catalogue, stage2_inputs, config.stage2, runtime, vectors, has_vector, lines


def test_the_target_transform_is_fit_on_training_items_and_stored(catalogue_root, tmp_path):
    _, inputs, _, runtime, vectors, has_vector, lines = prepare(
        catalogue_root, str(tmp_path), "--cf_target=pca_whiten:3")
    train = inputs.splits["train"]
    expected, scaling = cf_targets.fit(vectors, has_vector, train, "pca_whiten:3", 0.5)
    np.testing.assert_allclose(inputs.targets["cf"][:, :-1], expected, rtol=1e-6)
    assert inputs.targets["cf"].shape[1] == 3 + 1  # K targets + the weight
    assert scaling["fit_items"] == int(has_vector[train].sum()) < int(has_vector.sum())
    with open(os.path.join(runtime.outdir, "cf_target.json")) as f:
        assert json.load(f) == json.loads(json.dumps(inputs.cf_scaling))
    assert any(line.startswith("CF targets (pca_whiten:3, fit on ") for line in lines)
    assert inputs.cf_loss is None  # --cf_loss=paper: the arm's own


def test_the_arm_item_filter_masks_rare_items(catalogue_root, tmp_path):
    _, inputs, _, _, _, has_vector, lines = prepare(
        catalogue_root, str(tmp_path), "--cf_loss_min_interactions=4")
    counts = np.arange(len(has_vector)) % 7 + 1
    weights = inputs.targets["cf"][:, -1]
    np.testing.assert_array_equal(weights > 0, has_vector & (counts >= 4))
    assert any("(--cf_loss_min_interactions)" in line for line in lines)


def test_score_maps_the_users_into_target_space(catalogue_root, tmp_path):
    _, inputs, _, _, _, _, _ = prepare(catalogue_root, str(tmp_path), "--cf_loss=score")
    assert isinstance(inputs.cf_loss, losses.CFScoreLoss)
    moment = losses.user_moment(USERS * inputs.cf_scaling["scale"])
    np.testing.assert_allclose(inputs.cf_loss.user_moment, moment / np.trace(moment),
                               rtol=1e-5)
    with pytest.raises(UserError, match="--cf_loss=score matches the scores of stage 1's users"):
        prepare(catalogue_root, str(tmp_path / "none"), "--cf_loss=score", users=None)


@pytest.mark.parametrize("options, loss_class", [
    (["--cf_loss=infonce", "--cf_target=l2", "--cf_temperature_stage2=0.2"],
     losses.CFInfoNCELoss),
    (["--cf_loss=score", "--cf_target=pca_whiten:4"], losses.CFScoreLoss),
    pytest.param(["--cf_loss=cosine", "--cf_target=raw"], losses.CFCosineLoss,
                 marks=pytest.mark.slow),
    pytest.param(["--cf_loss=mse", "--cf_loss_min_interactions=3"], losses.CFMeanSquaredLoss,
                 marks=pytest.mark.slow),
])
def test_heads_train_on_cached_features_with_each_option(catalogue_root, tmp_path, options,
                                                         loss_class):
    catalogue, inputs, stage2, runtime, _, _, _ = prepare(
        catalogue_root, str(tmp_path / "run"), *options,
        f"--feature_cache={tmp_path.parent / 'shared_features'}")
    cf_dim = inputs.targets["cf"].shape[1] - 1
    result = trainer.train(catalogue, inputs, cf_dim, stage2, runtime, log=quiet)
    assert isinstance(result.model.loss["cf"], loss_class)
    history = open(os.path.join(runtime.outdir, "history.csv")).read().splitlines()
    header, row = history[0].split(","), history[1].split(",")
    cf_loss = float(row[header.index("cf_loss")])
    assert np.isfinite(cf_loss) and cf_loss > 0
    assert result.model.output["cf"].shape[-1] == cf_dim
