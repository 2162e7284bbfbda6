"""Atomic writes: a reader (TF Serving, a resumed run) never sees a half-written file."""

import json
import os


def write_text(path, text):
    # The temporary name is per process: two workers writing the same file (every worker of
    # a multi-worker run writes flags.txt) must not rename each other's temporary away.
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2))


def save_weights(model, path):
    """Keras save_weights through a temporary file (the name must end in .weights.h5)."""
    tmp = path.replace(".weights.h5", f".tmp-{os.getpid()}.weights.h5")
    model.save_weights(tmp)
    os.replace(tmp, path)
