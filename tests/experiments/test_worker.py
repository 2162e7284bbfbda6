"""Several cells in one worker process (cfimage/experiments/worker.py) give what each gives in
a process of its own, and one cell's failure is that cell's alone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cfimage.catalogue import demo
from cfimage.experiments import runner

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _tiny_experiment(tmp_path):
    """A 60-item demo catalogue at 32 px and random CF vectors (stage 1 is not under test);
    the cells train on cached backbone features, as experiment grids do, from one cache."""
    root = demo.make_demo_catalogue(str(tmp_path / "catalogue"), seed=2, num_items=60,
                                    num_users=30, image_size=32)
    ids = [f"item{i:05d}" for i in range(60)]
    vectors = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    np.savez(tmp_path / "vectors.npz", ids=np.array(ids), vectors=vectors)
    return [f"--catalogue={root}", f"--cf_embeddings={tmp_path / 'vectors.npz'}",
            "--image_size=32", "--weights=none", "--epochs=1", "--batch_size=16",
            "--train_backbone=false", f"--feature_cache={tmp_path / 'features'}"]


def _metrics(path):
    with open(path) as f:
        metrics = json.load(f)
    metrics.pop("train_seconds")
    return metrics


@pytest.mark.slow
def test_a_worker_runs_cells_as_their_own_processes_would(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    base = _tiny_experiment(tmp_path)
    first, second = runner.plan_cells(["multitask"], ["0.5"], ["2"], ["0", "1"])
    # A cell whose flags fail to parse (label ratio out of range), first in the worker.
    bad = dict(first, label_ratio=1.5, name="bad")
    messages = []
    runner.run_cells([bad, first, second], base, str(tmp_path), parallel=1, threads=1,
                     log=messages.append, cells_per_process=3)
    assert messages[0] == "3 cells, 0 already finished, 3 to run (1 at a time, up to 3 per " \
                          "process)"
    assert messages[1] == ("started worker for 3 cell(s): bad, multitask_r0.5_l2_s0, "
                           "multitask_r0.5_l2_s1")
    assert messages[2].startswith("bad FAILED (flags: flag --label_ratio=1.5: must be in "
                                  "(0, 1]")
    assert messages[2].endswith("see cells/bad/log.txt); 1 done, about 0 min left")
    assert messages[3].startswith("multitask_r0.5_l2_s0 finished; 2 done")
    assert messages[4].startswith("multitask_r0.5_l2_s1 finished; 3 done")
    # Each cell has its own log, with its own output only.
    bad_log = (tmp_path / "cells" / "bad" / "log.txt").read_text()
    assert "FATAL Flags parsing error: flag --label_ratio=1.5" in bad_log
    second_log = (tmp_path / "cells" / second["name"] / "log.txt").read_text()
    assert "--seed=1" in second_log and "--seed=0" not in second_log
    assert "[cfimage] test (checkpoint of epoch 1" in second_log
    # The second cell alone, as cells_per_process=1 runs it (the features are in the cache
    # by now, as they were for the worker's second cell).
    alone = tmp_path / "alone"
    command = runner.train_command(base, runner.cell_flags(second, str(alone), threads=1))
    subprocess.run(command, check=True, capture_output=True)
    # The cell that ran after another seed's cell gives exactly what it gives alone: the
    # global seed, layer names and Keras state of the first cell did not leak into it.
    assert _metrics(tmp_path / "cells" / second["name"] / "metrics.json") == \
        _metrics(alone / "cells" / second["name"] / "metrics.json")
    # Finished cells are skipped when the experiment runs again.
    messages.clear()
    runner.run_cells([first, second], base, str(tmp_path), parallel=1, threads=1,
                     log=messages.append, cells_per_process=3)
    assert messages == ["2 cells, 2 already finished, 0 to run (1 at a time, up to 3 per "
                        "process)"]


@pytest.mark.slow
def test_a_worker_that_dies_fails_the_cells_it_did_not_answer(tmp_path, monkeypatch):
    """A worker killed before it answers (here: it cannot even start) fails its cells with
    its exit status instead of hanging or dropping them."""
    monkeypatch.setattr(runner, "WORKER_COMMAND", [sys.executable, "-c", "import sys; "
                                                   "sys.exit(3)"])
    cells = runner.plan_cells(["image_only"], ["1.0"], ["2"], ["0", "1"])
    messages = []
    runner.run_cells(cells, [], str(tmp_path), parallel=1, threads=0, log=messages.append,
                     cells_per_process=2)
    assert [m.split(";")[0] for m in messages[2:]] == [
        "image_only_r1.0_l0_s0 FAILED (worker exit 3 before this cell finished",
        "image_only_r1.0_l0_s1 FAILED (worker exit 3 before this cell finished"]
