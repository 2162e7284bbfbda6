"""Atomic writes: a reader (TF Serving, a resumed run) never sees a half-written file.

Every writer goes through `replacing(path)`: it writes a temporary file beside `path`, which is
renamed onto `path` when the writing ends without error (atomic on one file system) and removed
when it fails.
"""

import contextlib
import json
import os
import uuid


@contextlib.contextmanager
def replacing(path, suffix=""):
    """Yields a temporary path beside `path` to write to; then renames it to `path`.

    The temporary name is unique per call: two processes or threads writing the same file
    (every worker of a multi-worker run writes flags.txt) must not rename each other's
    temporary away. A `suffix` that `path` ends with also ends the temporary name, for
    writers that check the extension (Keras' `.weights.h5`). Paths with a scheme (gs://...)
    are written and renamed through tf.io.gfile.
    """
    base = path[:-len(suffix)] if suffix and path.endswith(suffix) else path
    temporary = f"{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
    try:
        yield temporary
        _rename(temporary, path)
    finally:
        _remove_if_left(temporary)


def _rename(source, target):
    if "://" in target:
        import tensorflow as tf  # only for gs:// and other remote file systems
        tf.io.gfile.rename(source, target, overwrite=True)
    else:
        os.replace(source, target)


def _remove_if_left(path):
    if "://" in path:
        import tensorflow as tf
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    elif os.path.exists(path):
        os.remove(path)


def write_text(path, text):
    with replacing(path) as temporary, open(temporary, "w") as f:
        f.write(text)


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2))


def save_weights(model, path):
    """Keras save_weights through a temporary file (the name must end in .weights.h5)."""
    with replacing(path, suffix=".weights.h5") as temporary:
        model.save_weights(temporary)
