"""The counting pass of stage 1 (cfimage.stage1.scan): a scan of files agrees with the
in-memory catalogue and with the in-memory count, bad rows fail as catalogue loading fails."""

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from cfimage.catalogue import reader as catalogue_lib
from cfimage.stage1 import holdout, memory, scan
from cfimage.stage1 import two_tower as tt
from tests.conftest import write_catalogue
from tests.stage1.test_stream import ITEMS, SPEC, _scan, shard


@pytest.mark.parametrize("shards", [1, 3])
def test_scan_agrees_with_the_in_memory_catalogue(tiny_demo, tmp_path, shards):
    catalogue = catalogue_lib.load_catalogue(tiny_demo)
    frame = catalogue.interactions
    pattern = (os.path.join(tiny_demo, "interactions.csv") if shards == 1
               else shard(str(tmp_path), frame.drop(columns="timestamp"), shards))
    config = tt.TwoTowerConfig(holdout_fraction=0.2, min_rating=3.0, max_eval_users=25)
    # chunk_rows 100: the log is read in many chunks, and the eval sample is cut down often.
    summary = _scan(tiny_demo, pattern, catalogue.item_ids, config, chunk_rows=100)
    assert len(summary.files) == shards and summary.n_rows == len(frame)
    pd.testing.assert_series_equal(summary.item_counts, frame.item_id.value_counts()
                                   .sort_index(), check_names=False, check_index_type=False)
    fitted = frame[frame.weight >= 3.0]
    np.testing.assert_array_equal(summary.users, np.sort(fitted.user_id.unique()))
    np.testing.assert_array_equal(summary.items, np.sort(fitted.item_id.unique()))
    np.testing.assert_array_equal(summary.full.item_counts,
                                  fitted.item_id.value_counts()[summary.items])
    assert summary.full.weight_mean == pytest.approx(fitted.weight.astype(np.float64).mean())
    held = holdout.heldout_mask(frame.user_id.to_numpy(str), frame.item_id.to_numpy(str),
                                0.2, config.seed).numpy()
    assert summary.n_heldout == held.sum() and 0.1 < held.mean() < 0.3
    trained = fitted[~held[frame.weight >= 3.0]].item_id.value_counts()
    np.testing.assert_array_equal(summary.holdout.item_counts,
                                  trained.reindex(summary.items, fill_value=0))
    # The eval sample: every row of exactly 25 users, with the hash split's flags.
    sample = summary.eval_rows
    assert sample.user_id.nunique() == 25
    for user, rows in sample.groupby("user_id"):
        assert len(rows) == (frame.user_id == user).sum()
    key = frame.user_id + "\x1f" + frame.item_id
    flags = pd.Series(held, index=key).groupby(level=0).first()
    np.testing.assert_array_equal(sample.held, flags[sample.user_id + "\x1f" + sample.item_id])
    # The in-memory path counts its frame with the same counter: the same summary.
    counted = memory.Rows(frame, config).summary
    for field in ("n_rows", "n_heldout", "users", "items"):
        np.testing.assert_array_equal(getattr(counted, field), getattr(summary, field))
    for phase in ("full", "holdout"):
        np.testing.assert_array_equal(counted.phase(phase).item_counts,
                                      summary.phase(phase).item_counts)
    pd.testing.assert_frame_equal(
        counted.eval_rows.sort_values(["user_id", "item_id"]).reset_index(drop=True),
        summary.eval_rows.sort_values(["user_id", "item_id"]).reset_index(drop=True),
        check_dtype=False)


@pytest.mark.parametrize("interactions,match", [
    ("user,item_id\nu,a\n", r"missing column\(s\) \['user_id'\]"),
    ("user_id,item_id,weight\nu,a,1\n\nv,b,2\n ,a,1\n", r"line 5: empty 'user_id'"),
    ("user_id,item_id,weight\nu,a,1\nv,b,nan\n", r"line 3: 'weight' is 'nan'; weights must"),
    ("user_id,item_id,weight\nu,a,1\nv,b,-2\n", r"line 3: 'weight' is '-2'; weights must"),
    ("user_id,item_id,weight\nu,a,1\nv,b,inf\n", r"line 3: 'weight' is 'inf'; weights must"),
    ("user_id,item_id,weight\nu,a,1\nv,zzz,1\n",
     r"line 3: item id 'zzz' is not in items.csv .*--unknown_interaction_items=keep"),
    ("user_id,item_id\nu,zzz\n", r"no interaction refers to an item of items.csv"),
    ("user_id,item_id\nu,a\nv,b,c\n", r"line 3: 3 field\(s\)"),
    ("user_id,item_id\nu,a\nv,\"b\n", r"line 3: malformed CSV"),
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
        _scan(root, "interactions.csv", ["a", "b"], tt.TwoTowerConfig(), spec=spec,
              chunk_rows=2)
    assert str(in_memory.value).startswith(path) and str(streamed.value).startswith(path)


def test_chunks_keep_file_lines(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xef\xbb\xbfuser_id,item_id\nu,a\n\n\"v\nw\",b\nx,c\r\ny,d\n")
    chunks = list(catalogue_lib.read_csv_chunks(str(path), "interactions", chunk_rows=2))
    assert [len(frame) for frame, _ in chunks] == [2, 2]
    assert list(chunks[0][0].columns) == ["user_id", "item_id"]  # BOM dropped
    assert [lines.tolist() for _, lines in chunks] == [[2, 4], [6, 7]]
    assert chunks[0][0].user_id.tolist() == ["u", "v\nw"]
    path.write_bytes(b"user_id,item_id\nu,a\nv,\xff\n")
    with pytest.raises(catalogue_lib.CatalogueError, match=r"line 3: not valid UTF-8"):
        list(catalogue_lib.read_csv_chunks(str(path), "interactions", chunk_rows=1))


@pytest.mark.parametrize("policy,rows,note", [("drop", 2, "dropped 1 interaction"),
                                              ("keep", 3, "kept 1 interaction")])
def test_unknown_item_policies(tmp_path, policy, rows, note):
    root = write_catalogue(tmp_path, ITEMS, "user_id,item_id\nu,a\nu,zzz\nv,b\n",
                           images=["images/a.png", "images/b.png"])
    spec = dataclasses.replace(SPEC, unknown_interaction_items=policy)
    summary = _scan(root, "interactions.csv", ["a", "b"], tt.TwoTowerConfig(), spec=spec)
    in_memory = catalogue_lib.load_catalogue(root, spec)
    assert summary.n_rows == rows == len(in_memory.interactions)
    assert any(note in text for text in summary.notes) and any(note in text
                                                               for text in in_memory.notes)


def test_shards_must_share_a_header_and_exist(tmp_path):
    (tmp_path / "log-0.csv").write_text("user_id,item_id\nu,a\n")
    (tmp_path / "log-1.csv").write_text("item_id,user_id\na,u\n")
    with pytest.raises(catalogue_lib.CatalogueError, match="log-1.csv: header .* differs"):
        _scan(str(tmp_path), "log-*.csv", ["a"], tt.TwoTowerConfig())
    with pytest.raises(catalogue_lib.CatalogueError, match="no file matches"):
        scan.interaction_files(str(tmp_path), "nothing-*.csv")
    with pytest.raises(catalogue_lib.CatalogueError, match="catalogue directory not found"):
        scan.interaction_files(str(tmp_path / "absent"), "interactions.csv")


def test_should_stream(tmp_path):
    (tmp_path / "interactions.csv").write_text("user_id,item_id\nu,a\n")
    (tmp_path / "log-0.csv").write_text("user_id,item_id\nu,a\n")
    (tmp_path / "log-1.csv").write_text("user_id,item_id\nv,a\n")
    root = str(tmp_path)
    assert not scan.should_stream("auto", root, "interactions.csv")[0]
    assert scan.should_stream("auto", root, "interactions.csv", threshold=10)[0]
    assert scan.should_stream("true", root, "interactions.csv")[0]
    assert scan.should_stream("auto", root, "log-*.csv") == (True, "2 file(s), 0.00 GB")
    with pytest.raises(catalogue_lib.CatalogueError, match="--stream_interactions=true"):
        scan.should_stream("false", root, "log-*.csv")
