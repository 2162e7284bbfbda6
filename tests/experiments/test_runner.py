"""The experiment's cells (cfimage/experiments/runner.py): the grid, each cell's flags, and
cells run as child processes a few at a time."""

import json
import os
import subprocess
import sys

import pytest

from cfimage.errors import UserError
from cfimage.experiments import runner

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def test_plan_is_seed_major_and_arms_without_lambda_have_one_cell():
    cells = runner.plan_cells(["image_only", "multitask", "two_stage"], ["0.1", "1.0"],
                              ["1", "2"], ["0", "1"])
    assert len(cells) == 2 * 2 * (1 + 2 + 1)
    assert [c["seed"] for c in cells[:8]] == [0] * 8
    assert {c["cf_weight"] for c in cells if c["arm"] == "image_only"} == {0.0}
    assert {c["cf_weight"] for c in cells if c["arm"] == "two_stage"} == {1.0}
    # The names an earlier version of the runner gave its cell directories.
    assert [c["name"] for c in cells[:4]] == [
        "image_only_r0.1_l0_s0", "multitask_r0.1_l1_s0", "multitask_r0.1_l2_s0",
        "two_stage_r0.1_l1_s0"]
    assert len({c["name"] for c in cells}) == len(cells)


def test_cell_flags_name_the_arm_and_fix_its_confidence(tmp_path):
    sqrt, plain = runner.plan_cells(["multitask_sqrt", "multitask"], ["0.3"], ["2"], ["4"])
    flags = runner.cell_flags(sqrt, str(tmp_path), threads=1)
    assert flags == ["--arm=multitask_sqrt", "--cf_weight=2.0", "--cf_confidence=sqrt",
                     "--label_ratio=0.3", "--seed=4",
                     f"--workdir={tmp_path}/cells/multitask_sqrt_r0.3_l2_s4", "--noexport",
                     "--threads=1"]
    assert not any(f.startswith("--cf_confidence") for f in runner.cell_flags(plain, "w", 0))


def test_the_distill_arms_run_once_without_lambda_or_per_lambda_with_the_cf_head():
    cells = runner.plan_cells(["distill", "distill+multitask"], ["0.1"], ["1", "2"], ["0"])
    assert [c["name"] for c in cells] == ["distill_r0.1_l0_s0", "distill+multitask_r0.1_l1_s0",
                                          "distill+multitask_r0.1_l2_s0"]
    assert runner.cell_flags(cells[0], "w", 1)[:3] == ["--arm=distill", "--cf_weight=0.0",
                                                       "--cf_confidence=uniform"]


@pytest.mark.slow
def test_cells_run_in_parallel_report_failures_and_finished_cells_are_skipped(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setenv("PYTHONPATH", ROOT)
    cells = runner.plan_cells(["image_only", "multitask"], ["1.0"], ["2"], ["0"])
    done = tmp_path / "cells" / cells[0]["name"]
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({
        "validation_map": 0.5, "test": {"macro_map": 0.4, "precision_at_1": 0.3},
        "best_epoch": 2, "train_seconds": 1.0}))
    messages = []
    # An out-of-range flag: the child stops while parsing its flags, with exit status 1.
    runner.run_cells(cells, ["--max_loss=-1"], str(tmp_path), parallel=2, threads=1,
                     log=messages.append)
    assert messages[0] == "2 cells, 1 already finished, 1 to run (2 at a time)"
    assert messages[1] == "started multitask_r1.0_l2_s0"
    assert messages[2].startswith("multitask_r1.0_l2_s0 FAILED (exit 1; see "
                                  "cells/multitask_r1.0_l2_s0/log.txt); 1 done")
    log = (tmp_path / "cells" / "multitask_r1.0_l2_s0" / "log.txt").read_text()
    assert "flag --max_loss=-1.0: must be >= 0" in log
    results = runner.collect(cells, str(tmp_path))
    # A metrics.json without the cold/warm test views (written before them): NaN there.
    assert results[["test_cold_map", "test_warm_map"]].isna().all().all()
    assert results.drop(columns=["test_cold_map", "test_warm_map"]).to_dict("records") == [{
        "arm": "image_only", "label_ratio": 1.0, "cf_weight": 0.0, "seed": 0, "val_map": 0.5,
        "test_map": 0.4, "test_precision_at_1": 0.3, "best_epoch": 2, "distill_weight": 0.0,
        "seconds": 1.0}]


def test_collect_reads_the_views_and_warm_buckets(tmp_path):
    (cell,) = runner.plan_cells(["hybrid"], ["1.0"], ["2"], ["0"])
    done = tmp_path / "cells" / cell["name"]
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({
        "validation_map": 0.5, "best_epoch": 2, "train_seconds": 1.0,
        "test": {"macro_map": 0.4, "precision_at_1": 0.3,
                 "views": {"cold": {"macro_map": 0.4}, "warm": {"macro_map": 0.6}},
                 "warm_buckets": [{"interactions": "1-9", "num_items": 7, "warm_map": 0.55,
                                   "cold_map": 0.45}]}}))
    (row,) = runner.collect([cell], str(tmp_path)).to_dict("records")
    assert (row["test_cold_map"], row["test_warm_map"]) == (0.4, 0.6)
    assert (row["warm_map@1-9"], row["cold_map@1-9"], row["items@1-9"]) == (0.55, 0.45, 7)
    assert row["distill_weight"] == 0.0  # a metrics.json without one: not a distill arm


def test_seeds_take_ranges_and_lists():
    assert runner.parse_seeds(["0-29"]) == list(range(30))
    assert runner.parse_seeds(["0-4", "10", "12-13"]) == [0, 1, 2, 3, 4, 10, 12, 13]
    assert runner.parse_seeds(["7"]) == [7] and runner.parse_seeds(["3-3"]) == [3]


@pytest.mark.parametrize("seeds, message", [
    (["5-2"], "--seeds: '5-2' is a reversed range; write it from the lower to the higher "
              "seed, e.g. 2-5"),
    (["a"], "--seeds: 'a' is not a seed or a range of seeds"),
    (["0-"], "--seeds: '0-' is not a seed"),
    (["-1"], "--seeds: '-1' is not a seed"),
    (["0-4", "3"], "--seeds: seed 3 is given more than once"),
    ([], "--seeds: give at least one seed"),
])
def test_bad_seeds_are_one_line_user_errors(seeds, message):
    with pytest.raises(UserError) as error:
        runner.parse_seeds(seeds)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_batches_spread_the_cells_over_the_parallel_workers():
    cells = list(range(10))
    assert runner._batches(cells, parallel=2, cells_per_process=8) == [cells[:5], cells[5:]]
    assert runner._batches(cells, parallel=1, cells_per_process=4) == [
        cells[:4], cells[4:8], cells[8:]]
    assert runner._batches(cells, parallel=3, cells_per_process=1) == [[c] for c in cells]
    assert runner._batches([], parallel=2, cells_per_process=8) == []


@pytest.mark.slow
def test_the_experiment_stops_on_bad_seeds_with_one_line_before_any_work(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-m", "cfimage.experiment", "--seeds=0-4,5-2",
                             f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "cfimage: error: --seeds: '5-2' is a reversed range; write it from the "
        "lower to the higher seed, e.g. 2-5")
    assert not (tmp_path / "run").exists()
