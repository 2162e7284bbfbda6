"""The best checkpoint on validation mAP (cfimage/stage2/callbacks.py): Keras' ModelCheckpoint
selects, BestCheckpoint records the epoch and keeps the best value across a resume."""

import hashlib
import json
import math

import keras
import numpy as np
import tensorflow as tf

from cfimage.stage2 import callbacks
from cfimage.stage2.metrics import evaluate_scores


def _tiny_model():
    pixels = keras.Input((4,), name="pixels")
    hidden = keras.layers.Dense(8, activation="relu")(pixels)
    model = keras.Model(pixels, {"labels": keras.layers.Dense(2, activation="sigmoid",
                                                              name="labels")(hidden),
                                 "cf": keras.layers.Dense(3, name="cf")(hidden)})
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss={"labels": "mse", "cf": "mse"})
    return model


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = {"labels": (rng.uniform(size=(8, 2)) > 0.5).astype(np.float32),
         "cf": rng.normal(size=(8, 3)).astype(np.float32)}
    return x, y


class ScriptedValidationMAP(keras.callbacks.Callback):
    """Test input: writes the given val_map of each epoch into the logs (as ValidationMAP does
    with the real one), and remembers the weights digest of every epoch."""

    def __init__(self, values):
        super().__init__()
        self.values, self.digests = list(values), []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_map"] = self.values[epoch]
        logs["val_precision_at_1"] = 0.5
        self.digests.append(_weights_digest(self.model))


def _weights_digest(model):
    return hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()


def _fit_scripted(path, values, resuming, messages):
    model = _tiny_model()
    record = callbacks.BestCheckpoint(path, log=messages.append)
    if not resuming:
        record.forget()
    scripted = ScriptedValidationMAP(values)
    x, y = _data()
    model.fit(x, y, batch_size=4, epochs=len(values), verbose=0,
              callbacks=[scripted, record.checkpoint, record])
    return model, record, scripted


def test_the_best_epoch_is_saved_recorded_and_never_a_nan_one(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    messages = []
    model, record, scripted = _fit_scripted(path, [0.3, 0.5, 0.5, 0.4, math.nan], False,
                                            messages)
    assert (record.best, record.best_epoch) == (0.5, 2)  # a tie does not replace it
    assert json.loads((tmp_path / "best.json").read_text()) == {"val_map": 0.5, "epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.weights.h5"]
    model.load_weights(path)
    assert _weights_digest(model) == scripted.digests[1]
    assert [m.endswith("(best so far, saved)") for m in messages[:4]] == [
        True, True, False, False]
    assert messages[4].startswith("epoch 5: val_map nan") and len(messages) == 5


def test_a_resumed_run_keeps_the_best_value_and_a_fresh_run_forgets_it(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    _, _, first = _fit_scripted(path, [0.3, 0.6], False, [])
    # Resumed: 0.5 is below the interrupted run's best (0.6), so nothing is replaced.
    _, record, _ = _fit_scripted(path, [0.5], True, [])
    assert (record.best, record.best_epoch) == (0.6, 2)
    model = _tiny_model()
    model.load_weights(path)
    assert _weights_digest(model) == first.digests[1]
    # Resumed, and better: replaced.
    _, record, _ = _fit_scripted(path, [0.7], True, [])
    assert (record.best, record.best_epoch) == (0.7, 1)
    # A fresh run in the same workdir starts from nothing: its 0.2 is its best.
    _, record, _ = _fit_scripted(path, [0.2], False, [])
    assert (record.best, record.best_epoch) == (0.2, 1)
    assert json.loads((tmp_path / "best.json").read_text()) == {"val_map": 0.2, "epoch": 1}


def test_validation_map_writes_the_metrics_of_the_models_scores(tmp_path):
    model = _tiny_model()
    x, y = _data(1)
    labels = y["labels"]
    labels[0] = [1, 1]  # every class has a positive
    labels[1] = [0, 0]
    validation = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    all_callbacks, record = callbacks.select_by_validation_map(
        validation, labels, ["a", "b"], str(tmp_path / "checkpoints" / "best.weights.h5"),
        resuming=False, log=lambda message: None)
    assert isinstance(all_callbacks[1], keras.callbacks.ModelCheckpoint)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=all_callbacks)
    expected = evaluate_scores(labels, model.predict(x, verbose=0)["labels"], ["a", "b"])
    assert history.history["val_map"][-1] == expected["macro_map"]
    assert history.history["val_precision_at_1"][-1] == expected["precision_at_1"]
    assert record.best == max(history.history["val_map"])
    assert (tmp_path / "checkpoints" / "best.weights.h5").is_file()


def test_a_patience_stops_the_phase_after_that_many_epochs_without_a_better_map(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    all_callbacks, record = callbacks.select_by_validation_map(
        None, None, None, path, resuming=False, log=lambda message: None, patience=2)
    scripted = ScriptedValidationMAP([0.3, 0.5, 0.4, 0.5, 0.9, 0.9])  # 0.9 never reached
    x, y = _data()
    history = _tiny_model().fit(x, y, batch_size=4, epochs=6, verbose=0,
                                callbacks=[scripted, *all_callbacks[1:]])
    assert len(history.history["loss"]) == 4  # epochs 3 and 4 were no better than epoch 2
    assert (record.best, record.best_epoch) == (0.5, 2)
    assert record.early_stopping.stopped_epoch == 3  # zero-based, as Keras counts
    _, record = callbacks.select_by_validation_map(None, None, None, path, resuming=False,
                                                   log=lambda message: None)
    assert record.early_stopping is None  # patience 0: every epoch
