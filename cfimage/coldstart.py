r"""Cold start, measured: what a trained model's predicted CF vector does for its test items.

    python -m cfimage.coldstart --workdir=runs/coldstart \
        --runs='runs/exp/cells/image_only_r0.1_*,runs/exp/cells/multitask_r0.1_l2_*'

Reads the finished `cfimage.train` runs of --runs (their workdirs, globs allowed: e.g. an
experiment's cells), exports each trained model afresh with every CF table and calls its
signatures on the run's test items, which stage 2 never trained on
(cfimage/experiments/coldstart_runs.py). For each test item: recall@--audience_k of its real
raters among the users the `audience` ranking picks, against popularity and the ceiling (its
own stage-1 vector); the label overlap and CF-neighbour recall@--neighbours_k of its
`similar_items`, against the neighbours by the image embedding of image_only runs
(cfimage/experiments/coldstart.py). Runs of one arm, label ratio and λ form a group: its
figures are averaged over its runs (seeds), with a 95% t-interval over runs, or, for a lone
run, over its test items.

Writes into its own --workdir: coldstart.md (the table, the command, the checks),
coldstart.csv (one row per group and figure), coldstart_runs.csv (one row per run) and runs/
(each run's per-item figures: a run already measured with the same settings is read back, so
the command resumes). docs/experiments.md, "Cold start" explains the figures.
"""

import hashlib
import json
import os
import sys
import time

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app
from absl import flags

from cfimage import train_flags
from cfimage import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", None, "The runs to measure: finished cfimage.train workdirs (glob "
                  "patterns allowed, e.g. 'runs/exp/cells/multitask_r0.1_*').")
flags.DEFINE_string("workdir", None, "Directory of the report (coldstart.md, coldstart.csv) "
                    "and of each run's per-item figures (runs/).")
flags.DEFINE_integer("audience_k", 50, "Users in the audience of an item: recall@K of its "
                     "raters.", lower_bound=1)
flags.DEFINE_integer("neighbours_k", 10, "Similar items per item: label overlap and "
                     "CF-neighbour recall@k.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Images per call of a signature.", lower_bound=1)
flags.DEFINE_integer("threads", 0, "TensorFlow threads (0 = TensorFlow's default).",
                     lower_bound=0)
flags.mark_flags_as_required(["runs", "workdir"])


def log(message):
    print(f"[coldstart] {message}", flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    started = time.time()

    # --- Set-up: the workdir (the report's), the runs -------------------------------------
    workdir = os.path.abspath(FLAGS.workdir)
    workdir_lib.claim(workdir, log=log)
    from cfimage.experiments import coldstart_runs
    runs = coldstart_runs.find_runs(FLAGS.runs, log=log)
    groups = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run.name)
    log(f"{len(runs)} run(s) in {len(groups)} group(s): {'; '.join(groups)}")
    import keras
    import tensorflow as tf
    from absl import logging
    logging.set_verbosity(logging.WARNING)  # each run's export traces, saves and says so
    if FLAGS.threads > 0:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)

    # --- Each run: measured, or read back from an earlier measurement of the same settings --
    per_run, infos = {}, []
    for index, run in enumerate(runs, 1):
        log(f"run {index}/{len(runs)}: {run.name} ({run.group})")
        figures, info = _measure_or_reuse(run, workdir, coldstart_runs)
        keras.backend.clear_session()  # each run builds a model: free the last one's state
        per_run[run.name] = figures
        infos.append(info)
        log(f"  recall@{FLAGS.audience_k}: model {figures['audience_model'].mean():.3f}, "
            f"popularity {figures['audience_popularity'].mean():.3f}, ceiling "
            f"{figures['audience_ceiling'].mean():.3f}; similar@{FLAGS.neighbours_k} label "
            f"overlap {figures['similar_model_labels'].mean():.3f} (true CF neighbours "
            f"{figures['similar_true_labels'].mean():.3f}); test mAP "
            f"{info['test_map_export']:.4f} (the run's {info['test_map_run']:.4f})")

    # --- Report ------------------------------------------------------------------------
    write_report(workdir, per_run, infos, groups)
    log(f"wrote {os.path.join(workdir, 'coldstart.md')} in {time.time() - started:.0f} s")


def _measure_or_reuse(run, workdir, coldstart_runs):
    """(figures, info) of `run`: from <workdir>/runs/ when measured there with the same
    settings and the same finished training, else measured and stored there."""
    import numpy as np

    key = {"workdir": run.workdir, "audience_k": FLAGS.audience_k,
           "neighbours_k": FLAGS.neighbours_k,
           "metrics": hashlib.sha256(json.dumps(run.metrics, sort_keys=True).encode()
                                     ).hexdigest()}
    stem = os.path.join(workdir, "runs", f"{os.path.basename(run.workdir)}_"
                        f"{hashlib.sha256(run.workdir.encode()).hexdigest()[:8]}")
    if os.path.isfile(stem + ".json") and os.path.isfile(stem + ".npz"):
        with open(stem + ".json") as f:
            stored = json.load(f)
        if stored.get("key") == key:
            log(f"  measured before with these settings: reading {stem}.npz")
            with np.load(stem + ".npz") as saved:
                figures = {name: saved[name] for name in saved.files}
            return figures, {**stored["info"], "run": run.name}
    figures, info = coldstart_runs.measure_run(
        run, FLAGS.audience_k, FLAGS.neighbours_k, os.path.join(workdir, "scratch"),
        batch_size=FLAGS.batch_size, log=log)
    from cfimage import atomic
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    np.savez(stem + ".npz", **figures)
    atomic.write_json(stem + ".json", {"key": key, "info": info})  # last: marks it complete
    return figures, info


def write_report(workdir, per_run, infos, groups):
    """coldstart.md, coldstart.csv and coldstart_runs.csv in `workdir`."""
    import pandas as pd

    from cfimage import atomic
    from cfimage.experiments import coldstart as measures
    from cfimage.experiments.coldstart_runs import SIGNATURE_CHECK_ITEMS

    summary = measures.summarise(per_run, groups)
    summary.to_csv(os.path.join(workdir, "coldstart.csv"), index=False)
    table = pd.DataFrame(infos)
    table.drop(columns=["workdir"]).to_csv(os.path.join(workdir, "coldstart_runs.csv"),
                                           index=False)
    shown = " ".join(sys.argv[1:])
    k_users, k_items = FLAGS.audience_k, FLAGS.neighbours_k
    lines = [
        "# Cold start, measured", "",
        f"`python -m cfimage.coldstart {shown}`", "",
        f"{len(infos)} run(s); each run's test items (never seen by stage 2) through a fresh "
        "export of its trained model. Mean and 95% t-interval over the runs of a row (seeds), "
        "or over the test items of a lone run. docs/experiments.md, section \"Cold start\", "
        "says what each figure is.", "",
        f"* **audience recall@{k_users}**: the share of a test item's real raters (users of "
        "the stage-1 table with an interaction on it) among the users ranked first by the "
        "model's predicted vector; by most training interactions (popularity); by the item's "
        "own stage-1 vector (ceiling: stage 1 saw these interactions).",
        f"* **similar@{k_items}**: the item's {k_items} nearest catalogue items (itself left "
        "out) by the predicted vector, or, for image_only runs, by the label head's input "
        "(cosine). Label overlap: share of them sharing a label with the item. CF-neighbour "
        f"recall: share of its {k_items} nearest items by its own stage-1 vector among them.",
        "", measures.markdown_table(summary, groups, k_users, k_items), "",
        "## Runs", "",
        "Checks: the export's test macro mAP against the run's own (metrics.json), and the "
        "share of the numpy ranking's ids that the `audience` / `similar_items` signatures "
        f"return for the first {SIGNATURE_CHECK_ITEMS} test items (1.0: the same ranking).",
        "",
        "| run | arm | labels | λ | seed | test items | audience items | similar items | "
        "test mAP (export / run) | audience agreement | similar agreement | seconds |",
        "| --- |" + " --- |" * 11]
    for info in infos:
        lines.append(
            f"| {info['run']} | {info['arm']} | {info['label_ratio']:g} | "
            f"{info['cf_weight']:g} | {info['seed']} | {info['test_items']} | "
            f"{info['audience_items']} | {info['similar_items']} | "
            f"{info['test_map_export']:.4f} / {info['test_map_run']:.4f} | "
            f"{info['audience_signature_agreement']:.3f} | "
            f"{info['similar_signature_agreement']:.3f} | {info['seconds']:.0f} |")
    atomic.write_text(os.path.join(workdir, "coldstart.md"), "\n".join(lines) + "\n")


def run():
    train_flags.run_main(main)


if __name__ == "__main__":
    run()
