r"""Runs the paper's comparison: arms x label ratios x λ values x seeds on one catalogue.

    python -m cfimage.experiment --train_flagfile=configs/movielens_posters_cpu.cfg \
        --arms=image_only,multitask --label_ratios=0.1,0.3,1.0 --cf_weights=1,2 \
        --seeds=0-4 --workdir=runs/experiment_movielens

Each cell is a normal `cfimage.train --arm=NAME` run in its own workdir
(<workdir>/cells/<cell>/; cfimage/experiments/runner.py; arms: cfimage/stage2/arms.py), in a
process of its own or, with --cells_per_process=N, N cells to a worker process
(cfimage/experiments/worker.py); a cell whose metrics.json exists is skipped, so the command
resumes. Stage 1 runs once (<workdir>/stage1/) and every cell reuses its vectors, so arms
differ only in stage 2. Arms are paired within a seed: same split, same label mask, same
initial weights. λ is chosen per arm and label ratio on mean *validation* mAP; the test split
is read once per cell. The paired t-test p-values of the report's comparisons with image-only
are Holm-corrected together (cfimage/experiments/report.py).

Writes <workdir>/results.csv (one row per cell), results.md (the table) and
map_vs_label_ratio.png, gain_vs_label_ratio.png.
"""

import json
import os
import subprocess
import sys

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from cfimage import train_flags
from cfimage import workdir as workdir_lib
from cfimage.experiments import runner
from cfimage.stage2 import arms

FLAGS = flags.FLAGS

flags.DEFINE_string("train_flagfile", None, "Flagfile of cfimage.train for every cell.")
flags.DEFINE_list("train_flags", [], "Extra cfimage.train flags for every cell, e.g. "
                  "--train_flags=--epochs=3,--image_size=96x64.")
flags.DEFINE_list("arms", ["image_only", "multitask"], "Arms (cfimage/stage2/arms.py): "
                  f"{arms.describe()}.")
flags.DEFINE_list("label_ratios", ["0.1", "0.3", "1.0"], "Label ratios.")
flags.DEFINE_list("cf_weights", ["2.0"], "λ values for the arms that have one.")
flags.DEFINE_list("seeds", ["0-4"], "Seeds (split, label mask, init): seeds and ranges "
                  "that include both ends, e.g. 0-29 or 0-4,10,12-13.")
flags.DEFINE_string("workdir", None, "Experiment directory.")
flags.DEFINE_integer("parallel", 1, "Cells run at once (2 with --threads_per_cell=1 gets "
                     "~13% more throughput than 1 on a 2-core CPU).")
flags.DEFINE_integer("threads_per_cell", 0, "TensorFlow threads per cell (0 = default).")
flags.DEFINE_integer("cells_per_process", 1, "Cells run one after another in one worker "
                     "process (cfimage/experiments/worker.py), which pays Python and "
                     "TensorFlow start-up (6 s or more) once for all of them; 1 = each cell is "
                     "its own `python -m cfimage.train` process.", lower_bound=1)
flags.DEFINE_boolean("report_only", False, "Only rebuild the report from finished cells.")
flags.mark_flags_as_required(["workdir"])
flags.register_validator("arms", lambda names: set(names) <= set(arms.ARMS),
                         message=f"unknown arm; choose from {', '.join(arms.ARMS)}")


def log(message):
    print(f"[experiment] {message}", flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    seeds = runner.parse_seeds(FLAGS.seeds)  # before any work: a bad seed stops here
    from cfimage.experiments import report

    workdir = os.path.abspath(FLAGS.workdir)
    workdir_lib.claim(workdir, log=log)  # each cell's workdir is locked by its own train run
    base_flags = ([f"--flagfile={os.path.abspath(FLAGS.train_flagfile)}"]
                  if FLAGS.train_flagfile else []) + list(FLAGS.train_flags)
    cells = runner.plan_cells(FLAGS.arms, FLAGS.label_ratios, FLAGS.cf_weights, seeds)
    with open(os.path.join(workdir, "experiment.json"), "w") as f:
        json.dump({"command": " ".join(sys.argv), "train_flags": base_flags,
                   "cells": len(cells)}, f, indent=2)

    if not FLAGS.report_only:
        # Stage 1 once: every cell trains on the same CF vectors.
        stage1 = os.path.join(workdir, "stage1")
        vectors = os.path.join(stage1, "cf_embeddings.npz")
        if not os.path.isfile(os.path.join(stage1, "cf_stage1.json")):
            log("stage 1 (CF embeddings), shared by every cell")
            subprocess.run(runner.train_command(base_flags, [f"--workdir={stage1}",
                                                             "--stage1_only"]), check=True)
        # Without --catalogue, stage 1 generated the demo catalogue: every cell reads that one
        # (a later --catalogue in the train flags still wins) instead of generating its own.
        demo = os.path.join(stage1, "demo_catalogue")
        shared = [f"--catalogue={demo}"] if os.path.isfile(os.path.join(demo, "demo.json")) \
            else []
        # Its user vectors too: --cf_loss=score reads them (written by every stage-1 model).
        users = os.path.join(stage1, "user_embeddings.npz")
        base_flags = shared + base_flags + [f"--cf_embeddings={vectors}"] + (
            [f"--cf_user_embeddings={users}"] if os.path.isfile(users) else [])
        runner.run_cells(cells, base_flags, workdir, FLAGS.parallel, FLAGS.threads_per_cell,
                         log=log, cells_per_process=FLAGS.cells_per_process)

    results = runner.collect(cells, workdir)
    if results.empty:
        log("no finished cell yet: nothing to report")
        return
    results.to_csv(os.path.join(workdir, "results.csv"), index=False)
    table = report.write_report(results, workdir, command=" ".join(sys.argv))
    print(table)


if __name__ == "__main__":
    train_flags.run_main(main)
