"""Streaming stage 1 (cfimage.stage1.stream): the scan agrees with the in-memory catalogue, the fit
is the in-memory fit, planted structure is found, bad rows fail like catalogue.py's."""

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from cfimage.catalogue import reader as catalogue_lib
from cfimage.stage1 import two_tower as ce
from cfimage.stage1 import stream as cf_stream
from tests.conftest import write_catalogue
from tests.test_cf_embeddings import CATALOGUE, FAST, planted_log

SPEC = catalogue_lib.CatalogueSpec()
QUIET = dict(log=lambda message: None)


def _shard(root, frame, n):
    """Writes `frame` as n CSV shards; returns their glob."""
    for i, part in enumerate(np.array_split(np.arange(len(frame)), n)):
        frame.iloc[part].to_csv(os.path.join(root, f"log-{i}.csv"), index=False)
    return os.path.join(root, "log-*.csv")


def _scan(root, pattern, item_ids, config, spec=SPEC, **stream):
    files = cf_stream.interaction_files(root, pattern)
    return cf_stream.scan_interactions(files, spec, item_ids, config,
                                       cf_stream.StreamConfig(**stream), **QUIET)


@pytest.mark.parametrize("shards", [1, 3])
def test_scan_agrees_with_the_in_memory_catalogue(tiny_demo, tmp_path, shards):
    catalogue = catalogue_lib.load_catalogue(tiny_demo)
    frame = catalogue.interactions
    pattern = (os.path.join(tiny_demo, "interactions.csv") if shards == 1
               else _shard(str(tmp_path), frame.drop(columns="timestamp"), shards))
    config = ce.TwoTowerConfig(holdout_fraction=0.2, min_rating=3.0)
    # chunk_rows 100: the log is read in many chunks, and the eval sample is cut down often.
    summary = _scan(tiny_demo, pattern, catalogue.item_ids, config, chunk_rows=100,
                    max_eval_users=25)
    assert len(summary.files) == shards and summary.n_rows == len(frame)
    pd.testing.assert_series_equal(summary.item_counts, frame.item_id.value_counts()
                                   .sort_index(), check_names=False, check_index_type=False)
    fitted = frame[frame.weight >= 3.0]
    np.testing.assert_array_equal(summary.users, np.sort(fitted.user_id.unique()))
    pd.testing.assert_series_equal(summary.full.item_counts, fitted.item_id.value_counts()
                                   .sort_index(), check_names=False, check_index_type=False)
    assert summary.full.weight_mean == pytest.approx(fitted.weight.astype(np.float64).mean())
    held = cf_stream.heldout_mask(frame.user_id.to_numpy(str), frame.item_id.to_numpy(str),
                                  0.2, config.seed).numpy()
    assert summary.n_heldout == held.sum() and 0.1 < held.mean() < 0.3
    trained = fitted[~held[frame.weight >= 3.0]]
    pd.testing.assert_series_equal(summary.holdout.item_counts, trained.item_id.value_counts()
                                   .sort_index(), check_names=False, check_index_type=False)
    # The eval sample: every row of exactly 25 users, with the hash split's flags.
    sample = summary.eval_rows
    assert sample.user_id.nunique() == 25
    for user, rows in sample.groupby("user_id"):
        assert len(rows) == (frame.user_id == user).sum()
    key = frame.user_id + "\x1f" + frame.item_id
    flags = pd.Series(held, index=key).groupby(level=0).first()
    np.testing.assert_array_equal(sample.held, flags[sample.user_id + "\x1f" + sample.item_id])


def test_streaming_fit_is_the_in_memory_fit(tiny_demo):
    """Same rows, order and seed (the shuffle buffer holds the whole log): same loss, vectors."""
    catalogue = catalogue_lib.load_catalogue(tiny_demo)
    config = ce.TwoTowerConfig(embedding_dim=8, epochs=2, batch_size=256, holdout_fraction=0.0)
    memory = ce.train_two_tower(catalogue.interactions, catalogue.item_ids, config, **QUIET)
    summary = _scan(tiny_demo, "interactions.csv", catalogue.item_ids, config)
    streamed = cf_stream.train_two_tower_stream(summary, catalogue.item_ids, config, **QUIET)
    assert streamed.metrics["final_loss"] == pytest.approx(memory.metrics["final_loss"],
                                                           rel=1e-5)
    np.testing.assert_array_equal(streamed.has_vector, memory.has_vector)
    np.testing.assert_allclose(streamed.vectors, memory.vectors, atol=1e-5)
    np.testing.assert_array_equal(streamed.user_ids, memory.user_ids)


def test_streaming_finds_planted_structure_across_shards(tmp_path):
    pattern = _shard(str(tmp_path), planted_log(), 2)
    lines = []
    config = ce.TwoTowerConfig(**FAST)
    summary = cf_stream.scan_interactions(
        cf_stream.interaction_files(str(tmp_path), pattern),
        dataclasses.replace(SPEC, unknown_interaction_items="keep"), CATALOGUE, config,
        log=lines.append)
    result = cf_stream.train_two_tower_stream(summary, CATALOGUE, config, log=lines.append)
    recall, popularity = result.metrics["recall@3"], result.metrics["popularity_recall@3"]
    # As test_cf_embeddings' planted test (measured in memory: 0.70 vs 0.14).
    assert recall > 0.5 and recall > popularity + 0.3, (recall, popularity)
    assert "svd_recall@3" not in result.metrics
    assert any("SVD baseline skipped" in line for line in lines)
    np.testing.assert_array_equal(result.has_vector, [True] * 30 + [False])
    assert sum("[full] epoch" in line for line in lines) == FAST["epochs"]


ITEMS = "item_id,image,labels\na,images/a.png,x\nb,images/b.png,y\n"


@pytest.mark.parametrize("interactions,match", [
    ("user,item_id\nu,a\n", r"missing column\(s\) \['user_id'\]"),
    ("user_id,item_id,weight\nu,a,1\n\nv,b,2\n ,a,1\n", r"line 5: empty 'user_id'"),
    ("user_id,item_id,weight\nu,a,1\nv,b,nan\n", r"line 3: 'weight' is 'nan'; weights must"),
    ("user_id,item_id,weight\nu,a,1\nv,b,-2\n", r"line 3: 'weight' is '-2'; weights must"),
    ("user_id,item_id,weight\nu,a,1\nv,b,inf\n", r"line 3: 'weight' is 'inf'; weights must"),
    ("user_id,item_id,weight\nu,a,1\nv,zzz,1\n",
     r"line 3: item id 'zzz' is not in items.csv .*--unknown_interaction_items=keep"),
    ("user_id,item_id\nu,zzz\n", r"no interaction refers to an item of items.csv"),
])
def test_bad_rows_fail_as_in_memory(tmp_path, interactions, match):
    """The same file fails with the same file, line and reason in both paths."""
    root = write_catalogue(tmp_path, ITEMS, interactions, images=["images/a.png",
                                                                  "images/b.png"])
    path = os.path.join(root, "interactions.csv")
    spec = (dataclasses.replace(SPEC, unknown_interaction_items="keep")
            if "zzz\n" in interactions and "weight" not in interactions else SPEC)
    with pytest.raises(catalogue_lib.CatalogueError, match=match) as in_memory:
        catalogue_lib.load_catalogue(root, spec)
    with pytest.raises(catalogue_lib.CatalogueError, match=match) as streamed:
        _scan(root, "interactions.csv", ["a", "b"], ce.TwoTowerConfig(), spec=spec,
              chunk_rows=2)
    assert str(in_memory.value).startswith(path) and str(streamed.value).startswith(path)


@pytest.mark.parametrize("policy,rows,note", [("drop", 2, "dropped 1 interaction"),
                                              ("keep", 3, "kept 1 interaction")])
def test_unknown_item_policies(tmp_path, policy, rows, note):
    root = write_catalogue(tmp_path, ITEMS, "user_id,item_id\nu,a\nu,zzz\nv,b\n",
                           images=["images/a.png", "images/b.png"])
    spec = dataclasses.replace(SPEC, unknown_interaction_items=policy)
    summary = _scan(root, "interactions.csv", ["a", "b"], ce.TwoTowerConfig(), spec=spec)
    memory = catalogue_lib.load_catalogue(root, spec)
    assert summary.n_rows == rows == len(memory.interactions)
    assert any(note in text for text in summary.notes) and any(note in text
                                                               for text in memory.notes)
    # The drop policy filters the training stream too.
    config = ce.TwoTowerConfig(batch_size=8, holdout_fraction=0.0)
    batch = next(iter(cf_stream.make_dataset(summary, "full", config)))
    assert sorted(batch["item_id"].numpy().astype(str)) == sorted(
        memory.interactions.item_id)


def test_shards_must_share_a_header_and_exist(tmp_path):
    (tmp_path / "log-0.csv").write_text("user_id,item_id\nu,a\n")
    (tmp_path / "log-1.csv").write_text("item_id,user_id\na,u\n")
    with pytest.raises(catalogue_lib.CatalogueError, match="log-1.csv: header .* differs"):
        _scan(str(tmp_path), "log-*.csv", ["a"], ce.TwoTowerConfig())
    with pytest.raises(catalogue_lib.CatalogueError, match="no file matches"):
        cf_stream.interaction_files(str(tmp_path), "nothing-*.csv")
    with pytest.raises(catalogue_lib.CatalogueError, match="catalogue directory not found"):
        cf_stream.interaction_files(str(tmp_path / "absent"), "interactions.csv")


def test_should_stream(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu,a\n")
    (tmp_path / "log-0.csv").write_text("user_id,item_id\nu,a\n")
    (tmp_path / "log-1.csv").write_text("user_id,item_id\nv,a\n")
    root = str(tmp_path)
    assert not cf_stream.should_stream("auto", root, "interactions.csv")[0]
    assert cf_stream.should_stream("auto", root, "interactions.csv", threshold=10)[0]
    assert cf_stream.should_stream("true", root, "interactions.csv")[0]
    assert cf_stream.should_stream("auto", root, "log-*.csv") == (True, "2 file(s), 0.00 GB")
    with pytest.raises(catalogue_lib.CatalogueError, match="--stream_interactions=true"):
        cf_stream.should_stream("false", root, "log-*.csv")
