"""Runs several experiment cells in one process: `python -m cfimage.experiments.worker`.

Started by cfimage/experiments/runner.py with --cells_per_process=N > 1. It reads one JSON
request on stdin, {"cells": [{"name", "dir", "argv"}, ...]}, where argv are the cell's
cfimage.train flags, and runs the cells one after another in this interpreter: for each, the
flags are reset and parsed again from its argv, Keras's and TensorFlow's global state are
reset to that of a fresh process, and the same `cfimage.train.main` runs, its output (Python
and TensorFlow's C++ logging alike) appended to <dir>/log.txt. A cell that fails (a flag out
of range, a UserError, any exception) is answered as failed and the next cell runs.

Answers: one JSON line per cell on stdout, {"name", "status": "finished"|"failed",
"error"?, "seconds"}, written when the cell ends.

Why a cell here equals a cell of its own process: every random choice of a run comes from its
--seed (split and label mask from numpy generators of that seed; initial weights, shuffles and
augmentation from keras.utils.set_random_seed and seeded tf.data ops), and what a previous
cell leaves behind that could change it (Keras's layer names and seed generators, TensorFlow's
global seed) is reset before each cell. tests/experiments/test_worker.py compares the
metrics.json of both.
"""

import contextlib
import gc
import json
import os
import sys
import time
import traceback

import cfimage  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)


@contextlib.contextmanager
def output_to(path):
    """Sends this process's stdout and stderr (file descriptors 1 and 2, so that TensorFlow's
    C++ logging goes there too) to the end of `path` while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def reset_global_state():
    """What a fresh process starts with: no Keras models, layer-name counters or seed
    generators, and no TensorFlow global seed (an op seed then pairs with TensorFlow's default
    graph seed, as in a new process)."""
    import keras
    import tensorflow as tf
    keras.backend.clear_session()
    tf.random.set_seed(None)
    gc.collect()


def run_cell(argv, cell_dir):
    """Runs one cell (cfimage.train `argv`, flags only); returns None when it finished, or a
    one-line error when it failed (the traceback goes to its log.txt, with the rest of its
    output)."""
    from absl import flags

    from cfimage import train
    from cfimage.errors import UserError

    os.makedirs(cell_dir, exist_ok=True)
    with output_to(os.path.join(cell_dir, "log.txt")):
        print(f"[worker] process {os.getpid()}: cfimage.train {' '.join(argv)}", flush=True)
        error = ""
        try:
            reset_global_state()
            train.FLAGS.unparse_flags()
            rest = train.FLAGS(["cfimage.train", *argv])
            train.main(rest)
        except UserError as failure:
            error = f"UserError: {failure}"
            print(f"cfimage: error: {failure}", flush=True)
        except flags.Error as failure:  # as absl's app.run reports a bad flag, exit status 1
            error = f"flags: {failure}"
            print(f"FATAL Flags parsing error: {failure}", flush=True)
        except (Exception, SystemExit) as failure:  # one cell fails, not the worker
            error = f"{type(failure).__name__}: {failure}".splitlines()[0]
            traceback.print_exc()
            sys.stdout.flush()
        finally:
            reset_global_state()  # the next cell, or nothing, gets the memory back
    return error or None


def main():
    request = json.load(sys.stdin)
    # The answers go to the stdout the runner reads; the cells' own output to their log.txt.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    for cell in request["cells"]:
        started = time.time()
        error = run_cell(cell["argv"], cell["dir"])
        answer = {"name": cell["name"], "status": "finished" if error is None else "failed",
                  "seconds": round(time.time() - started, 1)}
        if error is not None:
            answer["error"] = error
        answers.write(json.dumps(answer) + "\n")
    answers.close()


if __name__ == "__main__":
    main()
