"""scripts/movielens_cached.sh's stage-1 check: rounding (another CPU) passes, other vectors
do not, and the recorded sha256 and fingerprint stay.

The script runs in a copy of the repository's layout (scripts/, docs/results/movielens_cached)
under tmp_path, on a workdir whose catalogue and stage 1 already exist, with a `python` first on
PATH that runs everything but `-m cfimage.experiment` (nothing trains).
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.scripts.test_prepare_common import SCRIPTS

pytestmark = pytest.mark.slow  # every test runs the script, which starts child processes

ROOT = os.path.abspath(os.path.join(SCRIPTS, ".."))
CELL = "image_only_r0.1_s0"


def _vectors(seed=0, n=300, dim=8):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 0.2, (n, dim)) + rng.normal(0.0, 0.1, dim)).astype(np.float32)


def _rounded(vectors):
    """Every value off by up to 1.3e-6, the largest difference measured across CPUs."""
    noise = np.random.default_rng(1).uniform(-1.3e-6, 1.3e-6, vectors.shape)
    return (vectors + noise).astype(np.float32)


def _sha(vectors):
    return hashlib.sha256(vectors.tobytes()).hexdigest()


@pytest.fixture
def repo(tmp_path):
    """(run, root, workdir): run(vectors, **env) stores stage 1's vectors, runs the script."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ["movielens_cached.sh", "stage1_fingerprint.py"]:
        shutil.copy(os.path.join(SCRIPTS, name), root / "scripts" / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = cfimage.experiment ]; then exit 0; fi\n'
        f'exec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    workdir = tmp_path / "work"
    (workdir / "catalogue").mkdir(parents=True)
    (workdir / "catalogue" / "items.csv").write_text("item_id,image,labels\n")
    (workdir / "stage1").mkdir()
    (workdir / "stage1" / "cf_stage1.json").write_text("{}")
    ids = np.array([str(i) for i in range(len(_vectors()))])

    def run(vectors, **env):
        np.savez(workdir / "stage1" / "cf_embeddings.npz", ids=ids, vectors=vectors)
        return subprocess.run(
            ["bash", str(root / "scripts" / "movielens_cached.sh"), str(workdir), "0"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                 "PYTHONPATH": ROOT, **env})

    return run, root, workdir


def _recorded(results):
    return ((results / "stage1_sha256.txt").read_text().strip(),
            json.loads((results / "stage1_fingerprint.json").read_text())["sha256"])


def test_rounding_passes_and_the_record_stays(repo, tmp_path):
    run, _, _ = repo
    results = tmp_path / "results"
    v = _vectors()
    first = run(v, RESULTS=str(results))
    assert first.returncode == 0, first.stderr
    assert _recorded(results) == (_sha(v), _sha(v))
    again = run(v, RESULTS=str(results))
    assert again.returncode == 0, again.stderr
    assert "up to rounding" not in again.stdout  # equal sha256: no fingerprint check
    # Another CPU: the same vectors up to rounding; the first run's record is kept.
    other_cpu = run(_rounded(v), RESULTS=str(results))
    assert other_cpu.returncode == 0, other_cpu.stderr
    assert "same vectors up to rounding" in other_cpu.stdout
    assert _recorded(results) == (_sha(v), _sha(v))


@pytest.mark.parametrize("fingerprint", [True, False])
def test_other_vectors_or_no_fingerprint_are_refused(repo, tmp_path, fingerprint):
    run, _, _ = repo
    results = tmp_path / "results"
    v = _vectors()
    assert run(v, RESULTS=str(results)).returncode == 0
    if fingerprint:
        refused = run(_vectors(seed=7), RESULTS=str(results))
        assert "other vectors: " in refused.stderr
    else:  # the results folders recorded before the fingerprint: rounding is refused too
        (results / "stage1_fingerprint.json").unlink()
        refused = run(_rounded(v), RESULTS=str(results))
        assert "stage1_fingerprint.json (recorded before fingerprints were)" in refused.stderr
    assert refused.returncode == 1
    assert "A different CPU alone changes the sha256" in refused.stderr
    assert (results / "stage1_sha256.txt").read_text().strip() == _sha(v)


def _base_grid(root, vectors):
    """docs/results/movielens_cached as a run on `vectors` left it: one cell."""
    base = root / "docs" / "results" / "movielens_cached"
    (base / "cells" / CELL).mkdir(parents=True)
    (base / "cells" / CELL / "metrics.json").write_text('{"test": {}}')
    np.savez(root / "base.npz", vectors=vectors)
    subprocess.run([sys.executable, str(root / "scripts" / "stage1_fingerprint.py"), "write",
                    str(root / "base.npz"), str(base / "stage1_fingerprint.json")],
                   check=True, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True)
    (base / "stage1_sha256.txt").write_text(_sha(vectors) + "\n")
    return base


@pytest.mark.parametrize("case", ["rounded", "other"])
def test_the_base_grid_is_shared_only_with_the_same_vectors(repo, tmp_path, case):
    run, root, workdir = repo
    v = _vectors()
    base = _base_grid(root, v)
    results = tmp_path / "results"
    result = run(_rounded(v) if case == "rounded" else _vectors(seed=7),
                 RESULTS=str(results), ARMS="image_only,hybrid")
    assert result.returncode == 0, result.stderr
    # The base grid's cell is restored (shared) only for its vectors, never copied over.
    assert (workdir / "cells" / CELL / "metrics.json").exists() == (case == "rounded")
    assert not (results / "cells" / CELL).exists()
    assert ("same vectors up to rounding" in result.stdout) == (case == "rounded")
    assert _recorded(base) == (_sha(v), _sha(v))
