"""Tests of the Mult-VAE and SVD stage-1 models (cfimage.stage1.matrix, mult_vae) on the
planted log: held-out recall above popularity, the vectors' layout, and the loss by hand."""

import numpy as np
import pytest
import tensorflow as tf

from cfimage.stage1 import baselines, matrix, memory, mult_vae
from cfimage.stage1 import two_tower as tt
from tests.stage1.planted import CATALOGUE, FAST, planted_log

VAE = dict(FAST, model="mult_vae", embedding_dim=8, vae_latent_dim=4, vae_epochs=60,
           vae_batch_size=16, vae_learning_rate=0.01)


@pytest.fixture(scope="module")
def vae_run():
    lines = []
    result = memory.train_model(planted_log(), CATALOGUE, tt.TwoTowerConfig(**VAE),
                                log=lines.append)
    return result, lines


def test_planted_mult_vae_beats_popularity(vae_run):
    result, lines = vae_run
    recall, popularity = result.metrics["recall@3"], result.metrics["popularity_recall@3"]
    assert recall > popularity + 0.2, (recall, popularity)
    assert any(line.startswith("stage 1: recall@3 Mult-VAE") and "vs SVD" in line
               for line in lines), lines
    assert result.metrics["cf_model"] == "mult_vae"


def test_mult_vae_vectors_are_decoder_rows_plus_bias(vae_run):
    result, _ = vae_run
    assert result.vectors.shape == (len(CATALOGUE), 9)  # embedding_dim + the item bias
    assert result.vectors.dtype == np.float32
    assert not result.has_vector[-1] and (result.vectors[-1] == 0).all()  # "ghost"
    assert result.user_vectors.shape[1] == 9 and (result.user_vectors[:, -1] == 1).all()
    # Vectors of one group are closer to each other than to another group's.
    groups = result.vectors[:30].reshape(3, 10, 9)
    unit = groups / np.linalg.norm(groups, axis=2, keepdims=True)
    within = np.mean([unit[g] @ unit[g].T for g in range(3)])
    across = np.mean([unit[0] @ unit[1].T, unit[1] @ unit[2].T, unit[0] @ unit[2].T])
    assert within > across + 0.2, (within, across)


def test_planted_svd_model_beats_popularity():
    lines = []
    config = tt.TwoTowerConfig(**dict(FAST, model="svd", embedding_dim=4))
    result = memory.train_model(planted_log(), CATALOGUE, config, log=lines.append)
    recall, popularity = result.metrics["recall@3"], result.metrics["popularity_recall@3"]
    assert recall > popularity + 0.2, (recall, popularity)
    # Rank 4 = the baseline's svd_rank: the model's recall is the baseline's.
    assert recall == pytest.approx(result.metrics["svd_recall@3"])
    assert result.vectors.shape == (len(CATALOGUE), 4)
    assert any(line.startswith("stage 1: recall@3 SVD model") for line in lines), lines


def test_svd_tables_reconstruct_the_svd():
    x = baselines.binary_matrix([0, 0, 1, 2, 2, 3], [0, 1, 1, 2, 3, 3], 4, 4)
    users, items = matrix.svd_tables(x, 2, seed=0)
    scaled, v = baselines.svd_factors(x, 2, seed=0)
    np.testing.assert_allclose(users @ items.T, scaled @ v.T, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(users, axis=0), np.linalg.norm(items, axis=0),
                               rtol=1e-5)  # split symmetrically: both S^½


def test_mult_vae_loss_by_hand():
    # One user, 2 items, x = [1, 0], logits [0, ln 3]: softmax [1/4, 3/4] -> -log(1/4).
    # mu = [1], logvar = [0]: KL = -0.5 (1 + 0 - 1 - 1) = 0.5; β = 2 -> 1.0.
    loss = mult_vae.loss_per_user(tf.constant([[1.0, 0.0]]), tf.constant([[0.0, np.log(3.0)]]),
                                  tf.constant([[1.0]]), tf.constant([[0.0]]), 2.0)
    assert float(loss[0]) == pytest.approx(np.log(4.0) + 1.0, rel=1e-6)


def test_mult_vae_user_dot_item_is_the_decoder_logit():
    x = baselines.binary_matrix([0, 1, 1], [0, 1, 2], 2, 3)
    config = tt.TwoTowerConfig(model="mult_vae", embedding_dim=4, vae_latent_dim=2,
                               vae_epochs=2, vae_batch_size=2)
    tf.keras.utils.set_random_seed(0)
    model = mult_vae.MultVAE(3, 4, 2)
    logits, _, _ = model(x.toarray().astype(np.float32))
    users = model.user_vectors(x.astype(np.float32), 2)
    np.testing.assert_allclose(users @ model.item_vectors().T, logits.numpy(), rtol=1e-5,
                               atol=1e-6)
    users, items, losses = mult_vae.fit(x, config, log=lambda line: None)
    assert users.shape == (2, 5) and items.shape == (3, 5) and len(losses) == 2


def test_mult_vae_resumes_from_its_last_epoch(tmp_path):
    x = baselines.binary_matrix([0, 1, 1, 2], [0, 1, 2, 2], 3, 3)
    config = tt.TwoTowerConfig(model="mult_vae", embedding_dim=4, vae_latent_dim=2,
                               vae_epochs=3, vae_batch_size=2)
    whole = mult_vae.fit(x, config, log=lambda line: None)
    lines = []
    short = tt.TwoTowerConfig(**{**config.__dict__, "vae_epochs": 2})
    mult_vae.fit(x, short, log=lines.append, backup_dir=str(tmp_path))  # "killed" after 2
    resumed = mult_vae.fit(x, config, log=lines.append, backup_dir=str(tmp_path))
    assert any("resuming stage 1 from epoch 2" in line for line in lines), lines
    assert len(resumed[2]) == 3
    np.testing.assert_allclose(resumed[1], whole[1], rtol=1e-4, atol=1e-5)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="model must be one of two_tower, mult_vae, svd"):
        tt.TwoTowerConfig(model="bpr").validate()
