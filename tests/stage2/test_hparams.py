"""The hparams session of a run (cfimage/stage2/hparams.py), read back from its events file
the way TensorBoard's hparams plugin reads it. tests/test_tensorboard.py asks TensorBoard."""

import glob

import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import metadata as hparams_metadata

from cfimage.stage2 import hparams
from tests.test_config import config_of


def _events(logdir):
    (path,) = glob.glob(str(logdir / "events.out.tfevents.*"))
    return [value for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value]


def test_a_run_is_one_session_with_its_settings_and_final_metrics(tmp_path):
    config = config_of("--arm=multitask", "--cf_weight=0.5", "--label_ratio=0.3", "--seed=4",
                       "--image_size=96x64", f"--workdir={tmp_path / 'cell_7'}",
                       "--catalogue=/data/shop/")
    logdir = hparams.write(str(tmp_path), config, {"macro_map": 0.25, "precision_at_1": 0.5},
                           0.375)
    assert logdir == str(tmp_path / "hparams")
    values = {value.tag: value for value in _events(tmp_path / "hparams")}

    start = hparams_metadata.parse_session_start_info_plugin_data(
        values[hparams_metadata.SESSION_START_INFO_TAG].metadata.plugin_data.content)
    settings = {name: getattr(value, value.WhichOneof("kind"))
                for name, value in start.hparams.items()}
    assert settings == {
        "arm": "multitask", "cf_weight": 0.5, "cf_confidence": config.stage2.cf_confidence,
        "distill_weight": 0.0, "label_ratio": 0.3, "seed": 4, "backbone": config.stage2.backbone,
        "weights": config.stage2.weights, "image_size": "96x64",
        "epochs": config.stage2.epochs, "batch_size": config.stage2.batch_size,
        "optimizer": config.stage2.optimizer, "learning_rate": config.stage2.learning_rate,
        "cf_source": "stage1", "catalogue": "shop"}
    assert start.group_name == "cell_7"  # the trial id: the workdir's (cell's) name

    finals = {tag: float(tf.make_ndarray(values[tag].tensor)) for tag in hparams.METRICS}
    assert finals == pytest.approx({"final/test_macro_map": 0.25,
                                    "final/test_precision_at_1": 0.5,
                                    "final/validation_map": 0.375})
