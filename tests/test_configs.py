"""Every flagfile in configs/ names real flags and starts with its command, runtime, result."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.cfg")))


@pytest.fixture(scope="module")
def train_flags():
    # In a child process: cfimage.train and cfimage.experiment both define --workdir, so the
    # two cannot share this process's absl FLAGS.
    script = "import cfimage.train; from absl import flags; print(' '.join(flags.FLAGS))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_flags_exist_and_header_documents_the_run(path, train_flags):
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    header = " ".join(line for line in lines if line.startswith("#"))
    for word in ("Command:", "Runtime:", "Expected:"):
        assert word in header, f"{path}: header lacks {word}"
    for line in lines:
        if line.startswith("--"):
            name = line[2:].split("=", 1)[0]
            assert name in train_flags | {"flagfile"}, f"{path}: unknown flag --{name}"
