"""Tests of the in-memory row source of stage 1 (cfimage.stage1.memory): validation of a
DataFrame, the held-out split, integer rows."""

import numpy as np
import pandas as pd
import pytest

from cfimage.catalogue.reader import CatalogueError
from cfimage.stage1 import memory
from cfimage.stage1 import two_tower as tt
from tests.stage1.planted import planted_log


@pytest.mark.parametrize("interactions,item_ids,error,match", [
    (pd.DataFrame(columns=["user_id", "item_id", "weight"]), ["a"], ValueError, "empty log"),
    (pd.DataFrame({"user_id": ["u"]}), ["a"], CatalogueError,
     r"missing column\(s\) \['item_id'\]"),
    (pd.DataFrame({"user_id": ["u", "v"], "item_id": ["a", "b"], "weight": [1.0, -2]}),
     ["a"], CatalogueError, r"row 1: 'weight' is '-2.0'; weights must be finite numbers > 0"),
    (pd.DataFrame({"user_id": ["u", None], "item_id": ["a", "b"]}), ["a"], CatalogueError,
     "row 1: empty 'user_id'"),
    (pd.DataFrame({"user_id": ["u"], "item_id": ["zzz"], "weight": [1.0]}), ["a", "b"],
     ValueError, "no catalogue item has any interaction"),
    (pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "weight": [1.0]}), [], ValueError,
     "non-empty"),
])
def test_bad_inputs(interactions, item_ids, error, match):
    with pytest.raises(error, match=match):
        memory.train_two_tower(interactions, item_ids, tt.TwoTowerConfig(), log=lambda s: None)


def test_split_holdout_is_hashed_by_pair_and_disjoint():
    log = planted_log(n_users=10)
    log = pd.concat([log, pd.DataFrame([("ua0", "x0", 3.0)], columns=log.columns)],
                    ignore_index=True)  # ("ua0", "x0") now twice.
    train, heldout = memory.split_holdout(log, 0.3, seed=1)
    assert len(train) + len(heldout) == len(log)
    pairs_train = set(zip(train["user_id"], train["item_id"]))
    # All rows of a pair are on one side.
    assert not pairs_train & set(zip(heldout["user_id"], heldout["item_id"]))
    assert 0.15 < len(heldout) / len(log) < 0.45
    pd.testing.assert_frame_equal(heldout, memory.split_holdout(log, 0.3, seed=1)[1])
    assert not heldout.equals(memory.split_holdout(log, 0.3, seed=2)[1])


def test_rows_are_integer_table_rows_of_the_summary():
    log = planted_log(n_users=3)
    config = tt.TwoTowerConfig(holdout_fraction=0.3, min_rating=None)
    rows = memory.Rows(memory.clean_interactions(log), config)
    summary = rows.summary
    np.testing.assert_array_equal(summary.users[rows.user], log["user_id"])
    np.testing.assert_array_equal(summary.items[rows.item], log["item_id"])
    assert summary.holdout.n_rows == int((~rows.held).sum()) == len(
        memory.split_holdout(log, 0.3, config.seed)[0])
    batches = list(rows.dataset("holdout"))
    assert sum(len(b["user"]) for b in batches) == summary.holdout.n_rows
    assert np.mean(np.concatenate([b["weight"] for b in batches])) == pytest.approx(1.0)
