"""The cells of an experiment grid (arms x label ratios x λ values x seeds), each a normal
`cfimage.train` run in its own workdir, a few at a time, and their metrics.

The arms are those of cfimage/stage2/arms.py: a cell passes `--arm=NAME`, and the arm
decides what its λ and confidence weighting mean.

A cell runs either as its own `python -m cfimage.train` child process (cells_per_process=1),
or with up to N other cells in one `python -m cfimage.experiments.worker` child, which parses
each cell's flags in turn and calls the same `cfimage.train.main`: the interpreter and
TensorFlow start once per N cells instead of once per cell (6 s or more each, most of a cell's
time when it trains on cached features).
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time

from cfimage.errors import UserError
from cfimage.stage2 import arms


def parse_seeds(items):
    """--seeds as typed ("0-4", "10", "12-13", ...: ranges include both ends) -> the seeds in
    the order given. UserError for a bad item, an empty or reversed range, or a repeat."""
    seeds = []
    for item in items:
        text = item.strip()
        low, dash, high = text.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise UserError(f"--seeds: {item!r} is not a seed or a range of seeds; use "
                            "non-negative integers and ranges, e.g. --seeds=0-29 or "
                            "--seeds=0-4,10,12-13") from None
        if last < first:
            raise UserError(f"--seeds: {item!r} is a reversed range; write it from the lower "
                            f"to the higher seed, e.g. {last}-{first}")
        seeds.extend(range(first, last + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"--seeds: seed {repeated[0]} is given more than once "
                        f"({','.join(items)}); each seed is one paired replicate")
    if not seeds:
        raise UserError("--seeds: give at least one seed, e.g. --seeds=0-29")
    return seeds


def cell_name(arm, ratio, cf_weight, seed):
    return f"{arm}_r{ratio}_l{cf_weight}_s{seed}"


def plan_cells(arm_names, ratios, cf_weights, seeds):
    """Every cell of the grid, seed-major: a partial grid still holds complete pairs. An arm
    without a λ of its own (arms.Arm.grid_lambda) gets one cell per seed and ratio."""
    cells = []
    for seed in seeds:
        for ratio in ratios:
            for name in arm_names:
                for cf_weight in arms.get(name).grid_lambdas(cf_weights):
                    cells.append(dict(arm=name, label_ratio=float(ratio),
                                      cf_weight=float(cf_weight), seed=int(seed),
                                      name=cell_name(name, _text(ratio), _text(cf_weight),
                                                     seed)))
    return cells


def _text(value):
    """A grid value as typed ("0.1"), or a table value as the grid always wrote it (0.0 -> "0",
    1.0 -> "1"), so that the cell directories of an earlier run are found again."""
    return value if isinstance(value, str) else f"{value:g}"


def train_command(base_flags, extra):
    return [sys.executable, "-m", "cfimage.train", *base_flags, *extra]


WORKER_COMMAND = [sys.executable, "-m", "cfimage.experiments.worker"]


def cell_flags(cell, workdir, threads):
    """The cfimage.train flags of one cell (after the experiment's own train flags)."""
    arm = arms.get(cell["arm"])
    fixed = [f"--cf_confidence={arm.confidence}"] if arm.confidence else []
    return [f"--arm={arm.name}", f"--cf_weight={cell['cf_weight']}", *fixed,
            f"--label_ratio={cell['label_ratio']}", f"--seed={cell['seed']}",
            f"--workdir={os.path.join(workdir, 'cells', cell['name'])}", "--noexport",
            f"--threads={threads}"]


def _run_cell(command, cell_dir, log):
    """One cell as its own cfimage.train process; returns its exit status."""
    log(f"started {os.path.basename(cell_dir)}")
    os.makedirs(cell_dir, exist_ok=True)
    with open(os.path.join(cell_dir, "log.txt"), "a") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode


def _run_worker(jobs, on_done, log):
    """Up to N cells in one worker process (cfimage/experiments/worker.py). `jobs`: [(cell,
    argv, cell dir)]. The worker answers one JSON line per cell on its stdout; each cell's
    own output goes to its log.txt. A cell the worker never answered for (the process died)
    is reported failed with the worker's exit status."""
    names = [cell["name"] for cell, _, _ in jobs]
    log(f"started worker for {len(jobs)} cell(s): {', '.join(names)}")
    request = {"cells": [{"name": cell["name"], "dir": cell_dir, "argv": argv}
                         for cell, argv, cell_dir in jobs]}
    by_name = {cell["name"]: cell for cell, _, _ in jobs}
    process = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    try:
        process.stdin.write(json.dumps(request))
        process.stdin.close()
    except BrokenPipeError:  # the worker died before it read its cells: answered below
        pass
    answered = set()
    for line in process.stdout:
        try:
            answer = json.loads(line)
        except ValueError:
            continue  # not an answer: a library printed to the worker's own stdout
        if answer.get("name") in by_name:
            answered.add(answer["name"])
            ok = answer["status"] == "finished"
            on_done(by_name[answer["name"]], None if ok else answer.get("error", "failed")[:200])
    returncode = process.wait()
    for name in names:
        if name not in answered:
            on_done(by_name[name], f"worker exit {returncode} before this cell finished")


def _batches(pending, parallel, cells_per_process):
    """Pending cells in order, in groups of at most `cells_per_process`, spread so that
    `parallel` workers get about the same number of cells."""
    if not pending:
        return []
    per_worker = -(-len(pending) // max(1, parallel))
    size = max(1, min(cells_per_process, per_worker))
    return [pending[i:i + size] for i in range(0, len(pending), size)]


def run_cells(cells, base_flags, workdir, parallel, threads, log=print, cells_per_process=1):
    """Runs the cells without a metrics.json, `parallel` child processes at a time, each child
    a cfimage.train run of one cell (cells_per_process=1) or a worker of up to that many."""
    pending = [c for c in cells
               if not os.path.isfile(os.path.join(workdir, "cells", c["name"], "metrics.json"))]
    per_process = "" if cells_per_process == 1 else f", up to {cells_per_process} per process"
    log(f"{len(cells)} cells, {len(cells) - len(pending)} already finished, "
        f"{len(pending)} to run ({parallel} at a time{per_process})")
    started = time.time()
    lock = threading.Lock()
    done = [0]

    def on_done(cell, failure):
        with lock:
            done[0] += 1
            status = "finished" if failure is None else \
                f"FAILED ({failure}; see cells/{cell['name']}/log.txt)"
            left = (time.time() - started) / done[0] * (len(pending) - done[0])
            log(f"{cell['name']} {status}; {done[0]} done, about {left / 60:.0f} min left")

    def job(batch):
        if cells_per_process == 1:
            cell = batch[0]
            command = train_command(base_flags, cell_flags(cell, workdir, threads))
            returncode = _run_cell(command, os.path.join(workdir, "cells", cell["name"]), log)
            on_done(cell, None if returncode == 0 else f"exit {returncode}")
            return
        _run_worker([(cell, [*base_flags, *cell_flags(cell, workdir, threads)],
                      os.path.join(workdir, "cells", cell["name"])) for cell in batch],
                    on_done, log)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for future in [pool.submit(job, batch)
                       for batch in _batches(pending, parallel, cells_per_process)]:
            future.result()  # re-raises a failure of the runner itself (not of a cell)


def _view_columns(test):
    """The cold and warm test views of a cell (cfimage/stage2/evaluation.py): test_cold_map
    (every test item, no CF vector), test_warm_map (the items with a vector, given it), and
    per interaction-count bucket of those, `warm_map@<bucket>`, `cold_map@<bucket>`,
    `items@<bucket>`. NaN for a metrics.json written before the views existed."""
    views = test.get("views", {})
    columns = {"test_cold_map": views.get("cold", {}).get("macro_map", float("nan")),
               "test_warm_map": views.get("warm", {}).get("macro_map", float("nan"))}
    for bucket in test.get("warm_buckets", []):
        name = bucket["interactions"]
        columns.update({f"warm_map@{name}": bucket["warm_map"],
                        f"cold_map@{name}": bucket["cold_map"],
                        f"items@{name}": bucket["num_items"]})
    return columns


def collect(cells, workdir):
    """One row per finished cell: its grid values and test/validation figures."""
    import pandas as pd
    rows = []
    for cell in cells:
        path = os.path.join(workdir, "cells", cell["name"], "metrics.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            metrics = json.load(f)
        rows.append({**{k: cell[k] for k in ("arm", "label_ratio", "cf_weight", "seed")},
                     "val_map": metrics["validation_map"],
                     "test_map": metrics["test"]["macro_map"],
                     "test_precision_at_1": metrics["test"]["precision_at_1"],
                     "best_epoch": metrics["best_epoch"],
                     # --distill_weight of the distill arms (cfimage.train's flag, not a grid
                     # axis: pass it in --train_flags); 0 for the other arms.
                     "distill_weight": metrics.get("distill_weight", 0.0),
                     "seconds": metrics.get("train_seconds"), **_view_columns(metrics["test"])})
    return pd.DataFrame(rows)
