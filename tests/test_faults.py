"""Faults in the middle of writing or training: an interrupted export leaves no partial
version for TF Serving to load, and a NaN loss stops stage 2 with the last good checkpoint
intact."""

import hashlib
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfimage.serving import export
from cfimage.stage2 import fit
from cfimage.stage2 import losses
from cfimage.stage2.callbacks import select_by_validation_map

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TESTS = os.path.dirname(os.path.abspath(__file__))
SIZE = (32, 32)


def tiny_model(size, classes=2, cf_dim=3):
    """A model with the real output names and no backbone: the export code path is the same,
    and building it takes milliseconds."""
    pixels = keras.Input((*size, 3), name="pixels")
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(pixels))
    return keras.Model(pixels, {
        "labels": keras.layers.Dense(classes, activation="sigmoid", name="labels")(pooled),
        "cf": keras.layers.Dense(cf_dim, name="cf")(pooled)})


def _visible_versions(model_dir):
    """What TF Serving would consider: integer-named subdirectories."""
    return sorted(name for name in os.listdir(model_dir) if name.isdigit())


def _serves(path):
    image = tf.io.encode_png(np.full((20, 20, 3), 90, np.uint8)).numpy()
    scores = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant([image]))
    return scores["scores"].shape == (1, 2)


def test_export_interrupted_in_process_leaves_no_partial_version(tmp_path, monkeypatch):
    model = tiny_model(SIZE)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C after the SavedModel, before the assets are done

    monkeypatch.setattr(export.tf.io, "TFRecordWriter", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_saved_model(model, ["a", "b"], SIZE, str(tmp_path), "m")
    assert os.listdir(tmp_path / "m") == []  # no version, and the temporary directory is gone
    monkeypatch.undo()

    path = export.export_saved_model(model, ["a", "b"], SIZE, str(tmp_path), "m")
    assert path == str(tmp_path / "m" / "1") and _serves(path)


# The child exports this module's tiny model (its folder is on its sys.path).
KILLED_EXPORT = """
import os, signal, sys
import tensorflow as tf
from cfimage.serving import export
from test_faults import tiny_model
def killed(*args, **kwargs):  # SIGKILL half-way: the SavedModel is written, assets not
    os.kill(os.getpid(), signal.SIGKILL)
tf.io.TFRecordWriter = killed
export.export_saved_model(tiny_model((32, 32)), ["a", "b"], (32, 32), sys.argv[1], "m")
"""


@pytest.mark.slow
def test_export_killed_mid_write_leaves_no_visible_version_and_the_next_export_works(tmp_path):
    result = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(tmp_path)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS])})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    model_dir = tmp_path / "m"
    left = os.listdir(model_dir)
    # The half-written export is still under its temporary name, which is not an integer:
    # TF Serving does not load it and next_version does not count it.
    assert len(left) == 1 and left[0].startswith(".tmp-1-")
    assert (model_dir / left[0] / "saved_model.pb").is_file()
    assert _visible_versions(model_dir) == [] and export.next_version(str(model_dir)) == 1

    path = export.export_saved_model(tiny_model(SIZE), ["a", "b"], SIZE, str(tmp_path), "m")
    assert _visible_versions(model_dir) == ["1"] and _serves(path)
    # The next export also removed the dead process's temporary directory.
    assert os.listdir(model_dir) == ["1"]


@pytest.mark.slow
def test_only_temporaries_of_dead_exports_are_removed(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    dead, live = f".tmp-2-{finished.pid}", f".tmp-3-{os.getppid()}"
    for name in (dead, live, "1", ".tmp-x", "notes.txt"):
        (tmp_path / name).mkdir()
    assert export.remove_stale_temporaries(str(tmp_path), log=lambda m: None) == [dead]
    assert sorted(os.listdir(tmp_path)) == sorted([live, "1", ".tmp-x", "notes.txt"])


# --- A NaN loss in stage 2 ----------------------------------------------------------------

class PoisonAtEpoch(keras.callbacks.Callback):
    """Sets the first kernel to NaN when `epoch` begins: every later loss is NaN."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.trainable_weights[0]
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_nan_loss_stops_stage_2_naming_the_step_and_keeps_the_best_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    model = tiny_model((8, 8))
    fit.compile_model(model, fit.make_optimizer("adamw", 1e-3, 0.0, 1.0, 30),
                      losses.MaskedWeightedBCE([1.0, 1.0]), "multitask", 1.0, 1.0, False)
    images = rng.uniform(0, 255, (16, 8, 8, 3)).astype(np.float32)
    labels = np.zeros((16, 2), np.float32)
    labels[np.arange(16), np.arange(16) % 2] = 1
    y = {"labels": np.concatenate([labels, np.ones((16, 1), np.float32)], 1),
         "cf": np.concatenate([rng.normal(size=(16, 3)), np.ones((16, 1))], 1).astype(np.float32)}
    train = tf.data.Dataset.from_tensor_slices((images, y)).batch(4)  # 4 steps per epoch
    validation = tf.data.Dataset.from_tensor_slices((images[:8], {k: v[:8] for k, v in
                                                                  y.items()})).batch(4)
    best = str(tmp_path / "checkpoints" / "best.weights.h5")
    os.makedirs(os.path.dirname(best))
    messages = []
    selection, record = select_by_validation_map(validation, labels[:8], ["a", "b"], best,
                                                 resuming=False, log=messages.append)
    digests = []

    class RecordBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            digests.append(_digest(best))

    with pytest.raises(fit.TrainingDiverged) as stop:
        fit.resumable_fit(model, train, validation, 5, str(tmp_path), "",
                          callbacks=[*selection, RecordBest(), PoisonAtEpoch(2)])
    message = str(stop.value)
    # Epochs 1 and 2 are fine (steps 1-8); the first step of epoch 3 is step 9.
    assert message.startswith("stage 2: the loss became nan at training step 9; stopped "
                              f"(the best checkpoint so far is intact at {best})"), message
    assert "--learning_rate" in message
    assert len(digests) == 3 and digests[2] == digests[1] == _digest(best)
    assert record.best_epoch in (1, 2) and np.isfinite(record.best)
    assert any("val_map nan" in m for m in messages)  # the NaN epoch is logged, not kept

    restored = tiny_model((8, 8))
    restored.load_weights(best)
    assert all(np.isfinite(w).all() for w in restored.get_weights())
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert len(history) == 4  # header + 3 epochs, the last one with its NaN loss
