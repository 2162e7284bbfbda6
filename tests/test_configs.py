"""Every flagfile in configs/ names real flags and starts with its command, runtime, result."""

import glob
import os

import pytest

from cfimage import train  # noqa: F401  (defines the flags)
from absl import flags

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.cfg")))


def test_there_are_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_flags_exist_and_header_documents_the_run(path):
    with open(path) as f:
        lines = [line.strip() for line in f if line.strip()]
    header = " ".join(line for line in lines if line.startswith("#"))
    for word in ("Command:", "Runtime:", "Expected:"):
        assert word in header, f"{path}: header lacks {word}"
    for line in lines:
        if line.startswith("--"):
            name = line[2:].split("=", 1)[0]
            assert name in flags.FLAGS or name == "flagfile", f"{path}: unknown flag --{name}"
