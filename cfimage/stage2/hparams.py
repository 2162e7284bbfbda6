"""A run's settings and final metrics for TensorBoard's HPARAMS dashboard.

`write(tensorboard_dir, config, test, best)` makes `<tensorboard_dir>/hparams/` one hparams
session: the settings that tell runs apart (arm, λ, label ratio, seed, backbone, image size,
...) and the final metrics as scalars beside them. TensorBoard on one run's `tensorboard/`
shows one session (run `hparams`); on an experiment's `cells/` directory one session per cell
(run `<cell>/tensorboard/hparams`). The session has a folder of its own, not the logdir's root:
the plugin finds no metric values for a session in the root run "." (it looks them up in
"./."). No experiment-wide config is written: the plugin infers the hyperparameters and
metrics from the sessions it finds, so the cells of any grid line up without one.
"""

import os

import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

# Scalar tags of the final metrics; step 0: one value per run.
METRICS = ("final/test_macro_map", "final/test_precision_at_1", "final/validation_map")


def hparams_of(config):
    """The settings of a RunConfig (cfimage/config.py) shown as hyperparameters."""
    stage2, root = config.stage2, config.catalogue.root
    return {
        "arm": stage2.arm,
        "cf_weight": float(stage2.cf_weight),
        "cf_confidence": stage2.cf_confidence,
        "distill_weight": float(stage2.distill_weight),
        "label_ratio": float(stage2.label_ratio),
        "seed": int(stage2.seed),
        "backbone": stage2.backbone,
        "weights": str(stage2.weights),
        "image_size": "x".join(str(side) for side in stage2.image_size),
        "epochs": int(stage2.epochs),
        "batch_size": int(stage2.batch_size),
        "optimizer": stage2.optimizer,
        "learning_rate": float(stage2.learning_rate),
        "cf_source": "file" if config.stage1.cf_embeddings else "stage1",
        "catalogue": os.path.basename(os.path.normpath(root)) if root else "demo",
    }


def write(tensorboard_dir, config, test, best_validation_map):
    """Writes the hparams session and the final metrics (`test`: evaluation.evaluate_test's
    dict) into `<tensorboard_dir>/hparams`, and returns that folder. The trial id is the
    workdir's name (an experiment's cell name)."""
    values = (test["macro_map"], test["precision_at_1"], best_validation_map)
    logdir = os.path.join(tensorboard_dir, "hparams")
    writer = tf.summary.create_file_writer(logdir)
    with writer.as_default():
        hp.hparams(hparams_of(config),
                   trial_id=os.path.basename(os.path.normpath(config.output.workdir)))
        for tag, value in zip(METRICS, values):
            tf.summary.scalar(tag, float(value), step=0)
    writer.close()
    return logdir
