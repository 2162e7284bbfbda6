"""The prepared GPU scripts parse, use only real flags, and refuse clearly without a GPU."""

import os
import re
import subprocess
import sys

import pytest

from cfimage.stage2.arms import ARMS

pytestmark = pytest.mark.slow  # every test starts a child process

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCRIPTS = ["scripts/benchmark_gpu.sh", "scripts/experiment_gpu.sh"]


def flag_names(module_or_script):
    """Every flag name the program accepts, from its --helpfull."""
    args = ([sys.executable, "-m", module_or_script] if "/" not in module_or_script
            else [sys.executable, module_or_script])
    text = subprocess.run([*args, "--helpfull"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}).stdout
    return set(re.findall(r"^\s+--(?:\[no\])?(\w+)", text, flags=re.M))


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses_and_refuses_without_a_gpu(script):
    subprocess.run(["bash", "-n", script], cwd=ROOT, check=True)
    # The scripts call `python`: the one running the tests, as in an activated venv.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    result = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PATH": path},
                            timeout=300)
    assert result.returncode != 0
    assert "TensorFlow sees no GPU" in result.stderr


def test_experiment_script_uses_existing_flags():
    text = open(os.path.join(ROOT, "scripts/experiment_gpu.sh")).read()
    used = set(re.findall(r"--(\w+)=", text))
    experiment, train = flag_names("cfimage.experiment"), flag_names("cfimage.train")
    assert {"arms", "cf_weights", "workdir", "train_flags"} <= experiment
    assert used <= experiment | train, used - experiment - train
    # Every arm the script names is one the runner knows.
    for arms in re.findall(r"(?:ARMS:-|run_grid )\"?([a-z_,]+)", text):
        assert set(arms.split(",")) <= set(ARMS), arms
