"""Atomic writes: a reader (TF Serving, a resumed run) never sees a half-written file."""

import json
import os


def write_text(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2))


def save_weights(model, path):
    """Keras save_weights through a temporary file (the name must end in .weights.h5)."""
    tmp = path.replace(".weights.h5", ".tmp.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)
