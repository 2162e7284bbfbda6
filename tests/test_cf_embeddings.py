"""Tests for stage 1 (cfimage.stage1.two_tower) and its file I/O
(cfimage.stage1.embedding_files)."""

import dataclasses
import glob
import os

import numpy as np
import pandas as pd
import pytest

from cfimage.stage1 import two_tower as ce

import tensorflow as tf  # noqa: E402  (after cfimage, which selects Keras 2 for TFRS)
from google.protobuf import text_format  # noqa: E402
from tensorboard.plugins import projector  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Planted structure: users of group g only touch items of group g.

GROUPS = ("a", "b", "c")


def planted_log(n_users=20, n_items=10, per_user=8, seed=0):
    """User group g only touches item group g, plus an image-less item "x0" that all use."""
    rng = np.random.default_rng(seed)
    rows = []
    for group in GROUPS:
        items = [f"{group}{j}" for j in range(n_items)]
        # Skewed popularity inside a group, so that the baseline is not trivially bad.
        p = np.linspace(2, 1, n_items)
        for u in range(n_users):
            user = f"u{group}{u}"
            for item in rng.choice(items, size=per_user, replace=False, p=p / p.sum()):
                rows.append((user, item, 1.0))
            rows.append((user, "x0", 1.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "weight"])


CATALOGUE = [f"{group}{j}" for group in GROUPS for j in range(10)] + ["ghost"]
FAST = dict(embedding_dim=8, epochs=30, batch_size=32, learning_rate=0.1, temperature=0.5,
            holdout_fraction=0.3, recall_k=3, svd_rank=4, seed=0)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp("tb"))
    lines = []
    result = ce.train_two_tower(planted_log(), CATALOGUE, ce.TwoTowerConfig(**FAST),
                                log=lines.append, tensorboard_dir=logdir)
    return result, lines, logdir


def test_planted_two_tower_beats_popularity(planted):
    result, lines, _ = planted
    recall, popularity = result.metrics["recall@3"], result.metrics["popularity_recall@3"]
    # Popularity mixes the groups (~1/3 of its top-k is on-group); the towers should not.
    # (Measured: 0.70 vs 0.14; a user's unseen on-group items are few, so ~0.75 is the ceiling.)
    assert recall > 0.5 and recall > popularity + 0.3, (recall, popularity)
    assert result.metrics["n_heldout"] > 0
    assert result.metrics["n_train"] + result.metrics["n_heldout"] == len(planted_log())
    assert any(line.startswith("stage 1: recall@3 two-tower") and "vs SVD" in line
               and "vs popularity" in line for line in lines)
    assert sum("[holdout] epoch" in line for line in lines) == FAST["epochs"]
    assert sum("[full] epoch" in line for line in lines) == FAST["epochs"]


def test_planted_svd_baseline_in_metrics(planted):
    result, _, _ = planted
    svd, popularity = result.metrics["svd_recall@3"], result.metrics["popularity_recall@3"]
    assert svd > popularity + 0.3, (svd, popularity)
    assert result.metrics["svd_rank"] == 4


def test_planted_item_vectors_cluster_by_group(planted):
    result, _, _ = planted
    vectors = result.vectors[:30]
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = vectors @ vectors.T
    group = np.repeat(np.arange(3), 10)
    same = (group[:, None] == group[None, :]) & ~np.eye(30, dtype=bool)
    different = group[:, None] != group[None, :]
    within, across = cosine[same].mean(), cosine[different].mean()
    assert within > across + 0.3, (within, across)
    # Per item, too: its nearest other item is in its own group.
    np.fill_diagonal(cosine, -np.inf)
    assert np.mean(group[np.argmax(cosine, axis=1)] == group) >= 0.9


def test_result_layout_and_masking(planted):
    result, _, _ = planted
    np.testing.assert_array_equal(result.item_ids, np.array(CATALOGUE))
    assert result.vectors.shape == (len(CATALOGUE), 8) and result.vectors.dtype == np.float32
    # "ghost" has no interaction: masked, zeros. Every other catalogue item has a vector.
    np.testing.assert_array_equal(result.has_vector, [True] * 30 + [False])
    np.testing.assert_array_equal(result.vectors[-1], np.zeros(8))
    assert np.all(np.linalg.norm(result.vectors[:30], axis=1) > 0)
    assert result.user_vectors.shape == (60, 8) and result.user_vectors.dtype == np.float32
    assert len(set(result.user_ids)) == 60


def test_tensorboard_scalars(planted):
    _, _, logdir = planted
    tags = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    assert tags["stage1/holdout/loss"] == list(range(1, FAST["epochs"] + 1))
    assert tags["stage1/full/loss"] == list(range(1, FAST["epochs"] + 1))
    assert {"stage1/recall@3/two_tower", "stage1/recall@3/popularity",
            "stage1/recall@3/svd"} <= set(tags)


def test_min_interactions_masks_rare_items():
    log = planted_log(n_users=4)
    log = pd.concat([log, pd.DataFrame([("ua0", "rare", 1.0)], columns=log.columns)])
    config = ce.TwoTowerConfig(embedding_dim=4, epochs=1, batch_size=16, holdout_fraction=0.0,
                               min_interactions=2)
    result = ce.train_two_tower(log, ["rare", "a0", "ghost"], config, log=lambda s: None)
    np.testing.assert_array_equal(result.has_vector, [False, True, False])
    assert not result.vectors[0].any() and result.vectors[1].any()
    assert "recall@10" not in result.metrics  # holdout_fraction 0: no evaluation.


def test_min_rating_drops_low_weights_before_fitting():
    log = planted_log(n_users=4)
    log["weight"] = 4.0
    low = pd.DataFrame([("ua0", "meh", 2.0), ("ub0", "meh", 3.0), ("uc0", "a0", 1.0)],
                       columns=log.columns)
    log = pd.concat([log, low], ignore_index=True)
    lines = []
    config = ce.TwoTowerConfig(embedding_dim=4, epochs=1, batch_size=16, holdout_fraction=0.3,
                               min_rating=3.5, svd_rank=3)
    result = ce.train_two_tower(log, ["meh", "a0"], config, log=lines.append)
    # "meh" only has ratings below 3.5: it is not fitted, so it gets no vector.
    np.testing.assert_array_equal(result.has_vector, [False, True])
    assert result.metrics["n_interactions"] == len(log)
    assert result.metrics["n_interactions_fitted"] == len(log) - 3
    assert "min_rating=3.5 keeps" in lines[0]
    # The split is drawn from the whole log; only the fitted rows are filtered.
    known = ce.split_holdout(ce._clean_interactions(log), 0.3, config.seed)[0]
    assert result.metrics["n_train"] == len(known)
    assert result.metrics["n_fitted"] == int((known["weight"] >= 3.5).sum())
    with pytest.raises(ValueError, match="min_rating=5.0 drops all"):
        ce.train_two_tower(log, ["a0"], dataclasses.replace(config, min_rating=5.0))


def test_holdout_metrics_matches_train_two_tower():
    config = ce.TwoTowerConfig(embedding_dim=4, epochs=2, batch_size=16, holdout_fraction=0.3,
                               recall_k=3, svd_rank=4)
    log = planted_log(n_users=6)
    metrics = ce.holdout_metrics(log, config, log=lambda s: None)
    assert {"recall@3", "svd_recall@3", "popularity_recall@3"} <= set(metrics)
    assert "final_loss" not in metrics  # No refit.
    full = ce.train_two_tower(log, CATALOGUE, config, log=lambda s: None).metrics
    assert full["svd_recall@3"] == metrics["svd_recall@3"]
    assert full["popularity_recall@3"] == metrics["popularity_recall@3"]
    no_svd = ce.holdout_metrics(log, dataclasses.replace(config, svd_baseline=False),
                                log=lambda s: None)
    assert "svd_recall@3" not in no_svd
    with pytest.raises(ValueError, match="holdout_fraction must be in"):
        ce.holdout_metrics(log, dataclasses.replace(config, holdout_fraction=0.0))


@pytest.mark.parametrize("logq,accidental", [(False, False), (True, True)])
def test_flags_run(logq, accidental):
    config = ce.TwoTowerConfig(embedding_dim=4, epochs=1, batch_size=16, holdout_fraction=0.2,
                               logq_correction=logq, remove_accidental_hits=accidental)
    result = ce.train_two_tower(planted_log(n_users=5), CATALOGUE, config, log=lambda s: None)
    assert np.isfinite(result.metrics["recall@10"]) and np.isfinite(result.vectors).all()


@pytest.mark.parametrize("logq,accidental", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_loss_matches_hand_computation(logq, accidental):
    """compute_loss == summed softmax cross-entropy with logQ and accidental-hit masking."""
    config = ce.TwoTowerConfig(embedding_dim=3, temperature=0.5, logq_correction=logq,
                               remove_accidental_hits=accidental)
    model = ce.TwoTowerModel(["u1", "u2", "u3"], ["i1", "i2"], config)
    users, items = ["u1", "u2", "u3"], ["i1", "i2", "i1"]  # i1 twice: an accidental hit.
    probability = np.array([0.6, 0.3, 0.6], np.float32)
    features = {"user_id": tf.constant(users), "item_id": tf.constant(items),
                "weight": tf.constant([1.0, 2.0, 1.0]),
                "item_probability": tf.constant(probability)}
    loss = float(model.compute_loss(features))

    u = model.user_model(tf.constant(users)).numpy().astype(np.float64)
    v = model.item_model(tf.constant(items)).numpy().astype(np.float64)
    scores = u @ v.T / 0.5
    if logq:
        scores -= np.log(probability)[None, :]
    if accidental:
        same = np.array(items)[:, None] == np.array(items)[None, :]
        scores[same & ~np.eye(3, dtype=bool)] = -np.inf
    log_softmax = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    expected = -np.sum(np.array([1.0, 2.0, 1.0]) * np.diag(log_softmax))
    assert loss == pytest.approx(expected, rel=1e-4)


def test_recall_at_k_by_hand():
    scores = np.array([[0.9, 0.8, 0.1, 0.7],
                       [0.1, 0.2, 0.3, 0.4]])
    train = [np.array([0]), np.array([], np.int64)]
    # User 0: item 0 excluded, top-2 = {1, 3}; heldout {3, 2} -> 1 / min(2, 2) = 0.5.
    # User 1: top-2 = {3, 2}; heldout {2} plus one unseen item (-1) -> 1 / min(2, 2) = 0.5...
    heldout = [np.array([3, 2]), np.array([2, -1])]
    assert ce.recall_at_k(scores, train, heldout, k=2) == pytest.approx(0.5)
    # ... and with k=1 user 1 scores 0 / 1 (top-1 is item 3), user 0 scores 0 (top-1 item 1).
    assert ce.recall_at_k(scores, train, heldout, k=1) == pytest.approx(0.0)
    # A user without held-out items is skipped, not counted as 0.
    assert ce.recall_at_k(scores, train, [np.array([3]), np.array([], np.int64)],
                          k=2, chunk=1) == pytest.approx(1.0)


def test_split_holdout_is_per_user_and_disjoint():
    log = planted_log(n_users=10)
    log = pd.concat([log, pd.DataFrame([("solo", "a0", 1.0), ("ua0", "x0", 3.0)],
                                       columns=log.columns)])  # ("ua0", "x0") now twice.
    train, heldout = ce.split_holdout(log, 0.3, seed=1)
    assert len(train) + len(heldout) == len(log)
    assert "solo" not in set(heldout["user_id"])  # One item only: never held out.
    pairs_train = set(zip(train["user_id"], train["item_id"]))
    assert not pairs_train & set(zip(heldout["user_id"], heldout["item_id"]))
    per_user = heldout.drop_duplicates(["user_id", "item_id"]).groupby("user_id").size()
    assert per_user.loc["ub3"] == 2  # floor(0.3 * 9 distinct items)
    again = ce.split_holdout(log, 0.3, seed=1)[1]
    pd.testing.assert_frame_equal(heldout, again)


@pytest.mark.parametrize("interactions,item_ids,match", [
    (pd.DataFrame(columns=["user_id", "item_id", "weight"]), ["a"], "empty log"),
    (pd.DataFrame({"user_id": ["u"]}), ["a"], r"missing column\(s\) \['item_id'\]"),
    (pd.DataFrame({"user_id": ["u", "v"], "item_id": ["a", "b"], "weight": [1.0, -2]}),
     ["a"], r"row 1: weight -2\.0 is not a finite number > 0"),
    (pd.DataFrame({"user_id": ["u", None], "item_id": ["a", "b"]}), ["a"],
     "row 1: missing user_id"),
    (pd.DataFrame({"user_id": ["u"], "item_id": ["zzz"], "weight": [1.0]}), ["a", "b"],
     "no catalogue item has any interaction"),
    (pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "weight": [1.0]}), [], "non-empty"),
])
def test_bad_inputs(interactions, item_ids, match):
    with pytest.raises(ValueError, match=match):
        ce.train_two_tower(interactions, item_ids, ce.TwoTowerConfig(), log=lambda s: None)


@pytest.mark.parametrize("field,value", [
    ("embedding_dim", 0), ("holdout_fraction", 1.0), ("holdout_fraction", -0.1),
    ("epochs", 0), ("batch_size", 1), ("learning_rate", 0.0), ("temperature", 0.0),
    ("l2", -1.0), ("recall_k", 0), ("min_interactions", 0), ("svd_rank", 0),
    ("min_rating", float("nan")),
])
def test_bad_config(field, value):
    log = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "weight": [1.0]})
    with pytest.raises(ValueError, match=f"TwoTowerConfig: {field} must be"):
        ce.train_two_tower(log, ["a"], ce.TwoTowerConfig(**{field: value}))


# ---------------------------------------------------------------------------------------------
# File I/O.

IDS = np.array(["m1", "m2", "m3"])
VECTORS = np.array([[0.1, -2.5], [1e-7, 3.0], [0.0, 1 / 3]], np.float32)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_save_load_round_trip(tmp_path, suffix):
    path = tmp_path / ("sub/emb" + suffix)
    ce.save_embeddings(path, IDS, VECTORS)
    ids, vectors = ce.load_embeddings(path)
    np.testing.assert_array_equal(ids, IDS)
    np.testing.assert_array_equal(vectors, VECTORS)  # Exact: float32 repr round-trips.
    assert vectors.dtype == np.float32
    assert os.listdir(tmp_path / "sub") == ["emb" + suffix]  # No temp file left behind.


def test_csv_format_is_documented_layout(tmp_path):
    path = tmp_path / "emb.csv"
    ce.save_embeddings(path, IDS, VECTORS)
    lines = path.read_text().splitlines()
    assert lines[0] == "item_id,v0,v1" and lines[1].startswith("m1,0.1") and len(lines) == 4


def test_save_rejects_bad_arrays_and_keeps_old_file(tmp_path):
    path = tmp_path / "emb.npz"
    ce.save_embeddings(path, IDS, VECTORS)
    with pytest.raises(ValueError, match=r"row 1 \(item 'm2'\), column 0: non-finite value nan"):
        ce.save_embeddings(path, IDS, np.array([[0, 0], [np.nan, 0], [0, 0]]))
    np.testing.assert_array_equal(ce.load_embeddings(path)[1], VECTORS)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name,text,match", [
    ("e.csv", "", "empty file"),
    ("e.csv", "item_id,v0\n", "no data rows"),
    ("e.csv", "id,v0\na,1\n", "line 1: bad header"),
    ("e.csv", "item_id,v0,v2\na,1,2\n", "line 1: bad header"),
    ("e.csv", "item_id\na\n", "line 1: bad header"),
    ("e.csv", "item_id,v0,v1\na,1,2\nb,3\n", "line 3: inconsistent dimension: 1 values"),
    ("e.csv", "item_id,v0\na,1\nb,2\na,3\n", r"line 4: duplicate item id 'a' \(first at line 2\)"),
    ("e.csv", "item_id,v0\na,1\nb,nan\n", r"line 3 \(item 'b'\), column 0: non-finite value nan"),
    ("e.csv", "item_id,v0\na,inf\n", r"line 2 \(item 'a'\), column 0: non-finite value inf"),
    ("e.csv", "item_id,v0\na,1\nb,one\n", r"line 3 \(item 'b'\): value 'one' is not a number"),
    ("e.csv", "item_id,v0\n,1\n", "line 2: empty item id"),
    ("e.txt", "item_id,v0\na,1\n", "unknown embedding file extension '.txt'"),
    ("e.npz", "not a zip", "cannot read as .npz"),
])
def test_load_errors_name_file_and_row(tmp_path, name, text, match):
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError, match=match) as error:
        ce.load_embeddings(path)
    assert str(error.value).startswith(path)


@pytest.mark.parametrize("arrays,match", [
    (dict(ids=IDS), r"missing array\(s\) \['vectors'\]"),
    (dict(vectors=VECTORS), r"missing array\(s\) \['ids'\]"),
    (dict(ids=IDS, vectors=VECTORS[:2]), r"inconsistent dimension: vectors have shape \(2, 2\)"),
    (dict(ids=IDS, vectors=VECTORS[:, 0]), "inconsistent dimension"),
    (dict(ids=np.array(["a", "b", "a"]), vectors=VECTORS),
     r"row 2: duplicate item id 'a' \(first at row 0\)"),
    (dict(ids=IDS, vectors=np.where(np.eye(3, 2) > 0, np.inf, 0)),
     r"row 0 \(item 'm1'\), column 0: non-finite value inf"),
    (dict(ids=np.array([], str), vectors=np.zeros((0, 2))), "no items"),
])
def test_load_npz_errors(tmp_path, arrays, match):
    path = str(tmp_path / "e.npz")
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match) as error:
        ce.load_embeddings(path)
    assert str(error.value).startswith(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        ce.load_embeddings(tmp_path / "absent.csv")


def test_align_embeddings():
    messages = []
    aligned, has_vector = ce.align_embeddings(["m3", "new", "m1"], IDS, VECTORS, "f.csv",
                                              log=messages.append)
    np.testing.assert_array_equal(has_vector, [True, False, True])
    np.testing.assert_array_equal(aligned, [VECTORS[2], [0, 0], VECTORS[0]])
    assert aligned.dtype == np.float32
    assert "2/3 catalogue items" in messages[0] and "1 ids in the file" in messages[0]
    with pytest.raises(ValueError, match="f.csv: none of the 2 catalogue items has a vector"):
        ce.align_embeddings(["x", "y"], IDS, VECTORS, "f.csv", log=messages.append)


def test_write_projector(tmp_path):
    logdir = str(tmp_path / "projector")
    vectors = np.array([[1, 2], [0, 0], [3, 4]], np.float32)
    metadata = pd.DataFrame({"item_id": ["m3", "m1", "m2"],
                             "labels": [["Drama"], ["Comedy", "Drama"], []],
                             "title": ["C\tc", "A", "B"]})
    ce.write_projector(logdir, ["m1", "m2", "m3"], vectors, metadata)

    config = projector.ProjectorConfig()
    with open(os.path.join(logdir, "projector_config.pbtxt")) as f:
        text_format.Parse(f.read(), config)
    embedding = config.embeddings[0]
    assert embedding.metadata_path == "metadata.tsv"
    # What TensorBoard's projector plugin does: read that tensor from the latest checkpoint.
    reader = tf.train.load_checkpoint(logdir)
    np.testing.assert_array_equal(reader.get_tensor(embedding.tensor_name), vectors[[0, 2]])
    with open(os.path.join(logdir, embedding.metadata_path)) as f:
        rows = f.read().splitlines()
    assert rows == ["item_id\tlabels\ttitle", "m1\tComedy|Drama\tA", "m3\tDrama\tC c"]


def test_a_diverging_two_tower_stops_naming_stage_phase_and_step():
    config = ce.TwoTowerConfig(**{**FAST, "learning_rate": 1e38, "epochs": 3})
    lines = []
    with pytest.raises(SystemExit, match=r"stage 1 \[holdout\] fit: the loss became (nan|inf) "
                       r"at training step \d+; stopped \(nothing was saved\)"):
        ce.train_two_tower(planted_log(), CATALOGUE, config, log=lines.append)
    # It stopped in the first epoch instead of training on for the other two.
    assert not any("epoch 2/3" in line or "epoch 3/3" in line for line in lines), lines
