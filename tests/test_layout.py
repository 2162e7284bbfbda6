"""The package layout keeps its promises (issue 11): stage 1 is the only place that touches
tf_keras and TFRS, and it never touches Keras 3. Read from the source (AST), nothing imported."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cfimage")
STAGE1 = os.path.join("cfimage", "stage1")
KERAS2_ONLY = ("tf_keras", "tensorflow_recommenders")


def _modules():
    for directory, _, names in os.walk(PACKAGE):
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                yield os.path.relpath(path, os.path.dirname(PACKAGE)), path


def violations(relative, source):
    """(line, what) of every import or use that `relative`'s place in the package forbids."""
    in_stage1 = relative.startswith(STAGE1 + os.sep)
    found = []
    for node in ast.walk(ast.parse(source, relative)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if in_stage1 and top == "keras":
                found.append((node.lineno, f"imports Keras 3 ({name})"))
            if not in_stage1 and top in KERAS2_ONLY:
                found.append((node.lineno, f"imports {name} (stage 1 only)"))
        if (not in_stage1 and isinstance(node, ast.Attribute) and node.attr == "keras"
                and isinstance(node.value, ast.Name) and node.value.id in ("tf", "tensorflow")):
            found.append((node.lineno, "uses tf.keras (stage 1 only)"))
    return found


def test_only_stage1_touches_keras2_and_it_never_touches_keras3():
    found = [f"{relative}:{line}: {what}" for relative, path in _modules()
             for line, what in violations(relative, open(path, encoding="utf-8").read())]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("relative,source,bad", [
    ("cfimage/stage1/x.py", "import keras\n", True),
    ("cfimage/stage1/x.py", "from keras import layers\n", True),
    ("cfimage/stage1/x.py", "import tensorflow as tf\ntf.keras.layers.Dense(1)\n", False),
    ("cfimage/stage1/x.py", "import tensorflow_recommenders as tfrs\n", False),
    ("cfimage/stage2/x.py", "import keras\n", False),
    ("cfimage/stage2/x.py", "import tf_keras\n", True),
    ("cfimage/stage2/x.py", "from tensorflow_recommenders import tasks\n", True),
    ("cfimage/stage2/x.py", "import tensorflow as tf\nx = tf.keras.layers.Dense(1)\n", True),
    ("cfimage/train.py", "def f():\n    import tensorflow_recommenders\n", True),
])
def test_the_check_sees_each_kind_of_violation(relative, source, bad):
    assert bool(violations(relative.replace("/", os.sep), source)) == bad
