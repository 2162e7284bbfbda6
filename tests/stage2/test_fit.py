"""Stage-2 training mechanics: compile per arm, a fit that resumes and stops on a diverging
loss (cfimage/stage2/fit.py)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfimage import atomic
from cfimage.errors import UserError
from cfimage.stage2 import arms, fit, losses


def _tiny_model():
    pixels = keras.Input((4,), name="pixels")
    hidden = keras.layers.Dense(8, activation="relu")(pixels)
    return keras.Model(pixels, {"labels": keras.layers.Dense(2, activation="sigmoid",
                                                             name="labels")(hidden),
                                "cf": keras.layers.Dense(3, name="cf")(hidden)})


def _dataset(x):
    y = {"labels": np.ones((len(x), 3), np.float32), "cf": np.ones((len(x), 4), np.float32)}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def test_a_nan_loss_stops_the_run_naming_stage_and_step(tmp_path):
    model = _tiny_model()
    fit.compile_model(model, fit.make_optimizer("adamw", 1e-3, 0.0, 1.0, 10),
                      losses.MaskedWeightedBCE([1.0, 1.0]), "multitask", 1.0, 1.0, False)
    x = np.ones((8, 4), np.float32)
    x[5] = np.nan  # the second batch poisons the loss
    with pytest.raises(fit.TrainingDiverged,
                       match=r"stage 2: the loss became nan at training step \d") as stop:
        fit.resumable_fit(model, _dataset(x), _dataset(np.ones((4, 4), np.float32)), 3,
                          str(tmp_path), "")
    assert "no checkpoint had been chosen yet" in str(stop.value)


def test_an_exploding_loss_stops_the_run_naming_stage_step_and_value(tmp_path):
    model = _tiny_model()
    fit.compile_model(model, fit.make_optimizer("adamw", 1e-3, 0.0, 1.0, 10),
                      losses.MaskedWeightedBCE([1.0, 1.0]), "multitask", 1.0, 1.0, False)
    x = np.ones((8, 4), np.float32)
    x[4:] = 1e6  # finite, but the second batch's CF loss is huge
    with pytest.raises(fit.TrainingDiverged, match=r"stage 2: the loss exploded to [\d.e+]+ "
                       r"\(above --max_loss=10000\) at training step 2") as stop:
        fit.resumable_fit(model, _dataset(x), _dataset(np.ones((4, 4), np.float32)), 3,
                          str(tmp_path), "", max_loss=1e4)
    assert "no checkpoint had been chosen yet" in str(stop.value)
    assert isinstance(stop.value, UserError)  # the entry point prints it as one line
    # Without a limit the same data trains on: only NaN/inf stop it.
    model = _tiny_model()
    fit.compile_model(model, fit.make_optimizer("adamw", 1e-3, 0.0, 1.0, 10),
                      losses.MaskedWeightedBCE([1.0, 1.0]), "multitask", 1.0, 1.0, False)
    fit.resumable_fit(model, _dataset(x), _dataset(np.ones((4, 4), np.float32)), 1,
                      str(tmp_path / "free"), "")


def test_healthy_fit_writes_history_and_removes_its_backup(tmp_path):
    model = _tiny_model()
    fit.compile_model(model, fit.make_optimizer("sgd", 1e-2, 0.0, 0.0, 10),
                      losses.MaskedWeightedBCE([1.0, 1.0]), "contrastive", 1.0, 0.5, False)
    data = _dataset(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    fit.resumable_fit(model, data, data, 2, str(tmp_path), "pretrain")
    assert len((tmp_path / "history_pretrain.csv").read_text().splitlines()) == 3
    assert not os.path.exists(tmp_path / "backup_pretrain")
    path = str(tmp_path / "w.weights.h5")
    atomic.save_weights(model, path)
    assert os.path.isfile(path) and not os.path.exists(path.replace(".weights", ".tmp.weights"))


def _compiled_tiny_model():
    model = _tiny_model()
    fit.compile_model(model, fit.make_optimizer("adamw", 1e-3, 0.0, 1.0, 10),
                      losses.MaskedWeightedBCE([1.0, 1.0]), "multitask", 1.0, 1.0, False)
    return model


def test_the_training_state_is_built_before_fit_so_the_step_is_traced_once(tmp_path):
    data = _dataset(np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32))
    # The optimizer slots and loss trackers, from the data's spec: no weight changes.
    model = _compiled_tiny_model()
    weights = [w.numpy().copy() for w in model.weights]
    fit.build_training_state(model, data)
    assert model.optimizer.built and len(model.optimizer.variables) > 2 * len(weights)
    assert model.metrics_variables
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(before, after.numpy())
    # So the first trace of the train step creates no variable, and TensorFlow does not
    # trace it a second time (train_step runs once per trace).
    model = _compiled_tiny_model()
    traces = []
    train_step = model.train_step
    model.train_step = lambda batch: traces.append(batch) or train_step(batch)
    fit.resumable_fit(model, data, data, 2, str(tmp_path), "")
    assert len(traces) == 1


@pytest.mark.parametrize("arm", list(arms.ARMS))
def test_each_arm_compiles_its_cf_loss_with_the_given_weights(arm):
    model = _tiny_model()
    fit.compile_model(model, fit.make_optimizer("adamw", 1e-3, 0.0, 1.0, 10),
                      losses.MaskedWeightedBCE([1.0, 1.0]), arm, 1.0, 0.5, False,
                      triplet_margin=0.3)
    cf_loss = model.loss["cf"]
    if arm == "contrastive":
        assert isinstance(cf_loss, losses.CFTripletLoss) and cf_loss.margin == 0.3
    else:
        assert isinstance(cf_loss, losses.CFReconstructionLoss)
    distill = arms.get(arm).distill  # its label targets carry soft labels and their weight
    assert isinstance(model.loss["labels"], losses.DistilledBCE) == distill
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    y = {"labels": np.ones((8, 6 if distill else 3), np.float32),
         "cf": np.ones((8, 4), np.float32)}
    result = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert result["loss"] == pytest.approx(result["labels_loss"] + 0.5 * result["cf_loss"],
                                           rel=1e-5)


def test_an_unknown_arm_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown arm 'ensemble'; choose one of image_only"):
        fit.compile_model(_tiny_model(), "adamw", losses.MaskedCrossEntropy(), "ensemble",
                          1.0, 1.0, False)


@pytest.mark.slow
def test_atomic_writes_of_two_processes_to_one_file_do_not_collide(tmp_path):
    # Every worker of a multi-worker run writes <workdir>/flags.txt; with a shared temporary
    # name one worker renamed the other's away and crashed (found in a clean-clone CI run).
    import subprocess
    import sys
    script = ("import sys; from cfimage import atomic\n"
              "for i in range(300): atomic.write_text(sys.argv[1], f'{i}\\n')")
    root = os.path.join(os.path.dirname(__file__), "..", "..")
    writers = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "flags.txt")],
                                env={**os.environ, "PYTHONPATH": os.path.abspath(root)},
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()[-2000:]
    assert os.listdir(tmp_path) == ["flags.txt"]
