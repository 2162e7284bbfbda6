"""The linter configuration in setup.cfg ([flake8]) is enforced by the test suite."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.slow
def test_flake8_is_clean():
    result = subprocess.run([sys.executable, "-m", "flake8", "cfimage", "tests", "scripts"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
