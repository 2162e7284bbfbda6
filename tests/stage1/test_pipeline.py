"""cfimage.stage1.pipeline.run_stage1 through the real entry point: a stage-1 run killed (SIGKILL)
and started again with the same command resumes after its last completed two-tower epoch, in
memory and streaming (two_tower.fit's backup), and a finished stage 1 is reused."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from cfimage.catalogue import demo

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EPOCHS = 12


def _command(workdir, catalogue, stream):
    return [sys.executable, "-m", "cfimage.train", f"--catalogue={catalogue}",
            f"--workdir={workdir}", "--stage1_only", f"--cf_epochs={EPOCHS}", "--cf_dim=16",
            f"--stream_interactions={stream}", "--noexport"]


def _run_until(command, pattern):
    """Starts `command`, SIGKILLs it right after a stdout line matching `pattern`."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env={**os.environ, "PYTHONPATH": ROOT})
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.search(pattern, line):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    return "".join(seen)


def _resumed_epoch(output, phase):
    match = re.search(rf"resuming stage 1 from epoch (\d+) \(\[{phase}\] fit", output)
    assert match, output[-3000:]
    return int(match.group(1))


def _check_resumed(output, phase, killed_at):
    """Resumed after epoch N >= killed_at: no epoch up to N again, the next ones all run."""
    resumed = _resumed_epoch(output, phase)
    assert killed_at <= resumed < EPOCHS, (killed_at, resumed)
    ran = [int(e) for e in re.findall(rf"stage 1 \[{phase}\] epoch (\d+)/", output)]
    assert ran == list(range(resumed + 1, EPOCHS + 1)), (resumed, ran)


@pytest.mark.slow
@pytest.mark.parametrize("stream", ["false", "true"])
def test_killed_stage1_resumes_from_its_last_epoch(tmp_path, stream):
    catalogue = demo.make_demo_catalogue(str(tmp_path / "cat"), seed=4, num_items=120,
                                         num_users=80, image_size=32)
    workdir = tmp_path / "run"
    command = _command(workdir, catalogue, stream)
    env = {**os.environ, "PYTHONPATH": ROOT}

    # 1. Killed during the held-out fit, after its 3rd epoch.
    first = _run_until(command, r"stage 1 \[holdout\] epoch 3/")
    assert (workdir / "stage1_backup" / "holdout").is_dir()
    assert not (workdir / "cf_embeddings.npz").exists()

    # 2. Restarted: the held-out fit goes on from there; killed again in the full fit.
    second = _run_until(command, r"stage 1 \[full\] epoch 2/")
    _check_resumed(second, "holdout", 3)
    assert "stage 1: recall@10 two-tower" in second
    assert (workdir / "stage1_backup" / "holdout_metrics.json").is_file()
    assert not (workdir / "stage1_backup" / "holdout").exists()  # its fit is done

    # 3. Restarted: held-out metrics reused, the full fit resumes, stage 1 completes.
    third = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "resuming stage 1 after its held-out evaluation" in third.stdout
    assert "[holdout] epoch" not in third.stdout
    _check_resumed(third.stdout, "full", 2)
    assert "--stage1_only: stopping after stage 1" in third.stdout
    assert not (workdir / "stage1_backup").exists()  # cleaned once the result is saved
    with np.load(workdir / "cf_embeddings.npz") as saved:
        assert saved["vectors"].shape == (len(saved["ids"]), 16) and len(saved["ids"]) > 100
        assert np.isfinite(saved["vectors"]).all() and np.abs(saved["vectors"]).sum() > 0
    assert "resuming" not in first

    # 4. Once more: stage 1 is done, nothing is fitted again.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "stage 1 already done in this workdir" in again.stdout
