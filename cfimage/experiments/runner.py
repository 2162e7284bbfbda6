"""The cells of an experiment grid (arms x label ratios x λ values x seeds), each a normal
`python -m cfimage.train` run in its own workdir, a few at a time, and their metrics.

The arms are those of cfimage/stage2/arms.py: a cell passes `--arm=NAME`, and the arm
decides what its λ and confidence weighting mean.
"""

import concurrent.futures
import json
import os
import subprocess
import sys
import time

from cfimage.stage2 import arms


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


def cell_flags(cell, workdir, threads):
    """The cfimage.train flags of one cell (after the experiment's own train flags)."""
    arm = arms.get(cell["arm"])
    fixed = [f"--cf_confidence={arm.confidence}"] if arm.confidence else []
    return [f"--arm={arm.name}", f"--cf_weight={cell['cf_weight']}", *fixed,
            f"--label_ratio={cell['label_ratio']}", f"--seed={cell['seed']}",
            f"--workdir={os.path.join(workdir, 'cells', cell['name'])}", "--noexport",
            f"--threads={threads}"]


def _run_cell(command, cell_dir, log):
    log(f"started {os.path.basename(cell_dir)}")
    os.makedirs(cell_dir, exist_ok=True)
    with open(os.path.join(cell_dir, "log.txt"), "a") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode


def run_cells(cells, base_flags, workdir, parallel, threads, log=print):
    """Runs the cells without a metrics.json, `parallel` child processes at a time."""
    pending = [c for c in cells
               if not os.path.isfile(os.path.join(workdir, "cells", c["name"], "metrics.json"))]
    log(f"{len(cells)} cells, {len(cells) - len(pending)} already finished, "
        f"{len(pending)} to run ({parallel} at a time)")
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {}
        for cell in pending:
            command = train_command(base_flags, cell_flags(cell, workdir, threads))
            futures[pool.submit(_run_cell, command,
                                os.path.join(workdir, "cells", cell["name"]), log)] = cell
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            cell, returncode = futures[future], future.result()
            status = "finished" if returncode == 0 else \
                f"FAILED (exit {returncode}; see cells/{cell['name']}/log.txt)"
            left = (time.time() - started) / done * (len(pending) - done)
            log(f"{cell['name']} {status}; {done} done, about {left / 60:.0f} min left")


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
                     "seconds": metrics.get("train_seconds")})
    return pd.DataFrame(rows)
