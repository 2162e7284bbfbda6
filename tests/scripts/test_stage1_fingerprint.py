"""scripts/stage1_fingerprint.py: rounding passes, other vectors do not; the CLI's exit codes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.scripts.test_prepare_common import SCRIPTS

if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

import stage1_fingerprint as fp  # noqa: E402

ROOT = os.path.abspath(os.path.join(SCRIPTS, ".."))


def _vectors(seed=0, n=500, dim=8):
    """Stage-1-like vectors: float32, per-dimension means and stds ~0.2."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0.0, 0.2, (n, dim)) + rng.normal(0.0, 0.1, dim)).astype(np.float32)


def _rounded(vectors, size=1e-7, seed=1):
    """The vectors as another CPU's kernels might give them: every value off by up to `size`."""
    noise = np.random.default_rng(seed).uniform(-size, size, vectors.shape)
    return (vectors + noise).astype(np.float32)


def _compare(a, b, **kwargs):
    return fp.compare(fp.fingerprint(a), fp.fingerprint(b), **kwargs)


def test_identical_vectors_are_the_same_bit_for_bit():
    v = _vectors()
    same, diff, message = _compare(v, v.copy())
    assert (same, diff, message) == (True, 0.0, "same vectors (sha256 equal)")


@pytest.mark.parametrize("size", [1e-7, 1.3e-6])
def test_rounding_noise_is_the_same_up_to_rounding(size):
    v = _vectors()
    rounded = _rounded(v, size)
    assert not np.array_equal(v, rounded)
    a, b = fp.fingerprint(v), fp.fingerprint(rounded)
    assert a["sha256"] != b["sha256"]
    same, diff, message = fp.compare(a, b)
    assert same, message
    assert 0 < diff < fp.TOLERANCE / 10  # rounding stays far below the tolerance
    assert message.startswith("same vectors up to rounding (max |diff| ")
    assert "sha256 differs: another CPU's floating-point kernels" in message


def test_a_constant_shift_below_rounding_passes_and_a_larger_one_does_not():
    v = _vectors()
    assert _compare(v, v + np.float32(1e-6))[0]
    same, _, message = _compare(v, v + np.float32(0.01))
    assert not same and "mean" in message


@pytest.mark.parametrize("other", [
    pytest.param(lambda v: _vectors(seed=7), id="another random matrix"),
    pytest.param(lambda v: v[np.random.default_rng(3).permutation(len(v))], id="rows permuted"),
    pytest.param(lambda v: v[::-1].copy(), id="rows reversed"),
    pytest.param(lambda v: v * np.float32(1.01), id="scaled by 1.01"),
    pytest.param(lambda v: np.concatenate([v[:1] * 0.5, v[1:]]), id="one item halved"),
    pytest.param(lambda v: v[:, ::-1].copy(), id="dimensions reversed"),
])
def test_other_vectors_differ(other):
    v = _vectors()
    same, diff, message = _compare(v, other(v))
    assert not same, message
    assert diff > 10 * fp.TOLERANCE
    assert message.startswith("other vectors: ")


def test_a_permutation_keeps_means_and_stds_so_the_projections_tell():
    v = _vectors()
    a = fp.fingerprint(v)
    b = fp.fingerprint(v[np.random.default_rng(3).permutation(len(v))])
    np.testing.assert_allclose(a["mean"], b["mean"], atol=1e-12)
    np.testing.assert_allclose(a["std"], b["std"], atol=1e-12)
    assert "projections" in fp.compare(a, b)[2]


def test_other_shapes_or_ids_differ():
    v = _vectors()
    same, diff, message = _compare(v, v[:-1])
    assert (same, diff) == (False, np.inf) and "n_items" in message
    assert not _compare(v, v[:, :-1])[0]
    ids = np.array([str(i) for i in range(len(v))])
    rounded = _rounded(v)
    assert fp.compare(fp.fingerprint(v, ids), fp.fingerprint(rounded, ids))[0]
    same, _, message = fp.compare(fp.fingerprint(v, ids), fp.fingerprint(rounded, ids[::-1]))
    assert not same and "ids_sha256" in message


def test_nan_vectors_differ():
    v = _vectors()
    broken = v.copy()
    broken[3, 2] = np.nan
    assert not _compare(v, broken)[0]


def test_signs_of_an_item_do_not_depend_on_n_items():
    np.testing.assert_array_equal(fp._signs(1000)[:300], fp._signs(300))
    assert set(np.unique(fp._signs(300))) == {-1.0, 1.0}


def test_fingerprint_is_json_and_float64():
    v = _vectors(n=50, dim=3)
    print_ = json.loads(json.dumps(fp.fingerprint(v)))
    assert (print_["n_items"], print_["dim"], print_["dtype"]) == (50, 3, "float32")
    assert np.shape(print_["projections"]) == (fp.N_PROJECTIONS, 3)
    np.testing.assert_allclose(print_["mean"], v.astype(np.float64).mean(axis=0), rtol=1e-12)
    assert fp.compare(print_, fp.fingerprint(v))[0]


def _npz(path, vectors, ids=None):
    arrays = {"vectors": vectors} if ids is None else {"vectors": vectors, "ids": ids}
    np.savez(path, **arrays)
    return str(path)


def test_main_write_and_check(tmp_path, capsys):
    v = _vectors()
    recorded = str(tmp_path / "fingerprint.json")
    ids = np.array([str(i) for i in range(len(v))])
    assert fp.main(["write", _npz(tmp_path / "v.npz", v, ids), recorded]) == 0
    assert json.load(open(recorded))["ids_sha256"]
    capsys.readouterr()
    assert fp.main(["check", str(tmp_path / "v.npz"), recorded]) == 0
    assert capsys.readouterr().out == "same vectors (sha256 equal)\n"
    assert fp.main(["check", _npz(tmp_path / "r.npz", _rounded(v), ids), recorded]) == 0
    assert "same vectors up to rounding" in capsys.readouterr().out
    assert fp.main(["check", _npz(tmp_path / "o.npz", _vectors(seed=7), ids), recorded]) == 1
    assert capsys.readouterr().err.startswith("other vectors: ")
    # A tolerance of 0 lets only equal bits through.
    assert fp.main(["check", str(tmp_path / "r.npz"), recorded, "--tol=0"]) == 1


def test_main_refuses_bad_files(tmp_path, capsys):
    np.savez(tmp_path / "novec.npz", other=np.zeros((3, 2)))
    np.save(tmp_path / "plain.npy", np.zeros((3, 2)))
    np.savez(tmp_path / "ints.npz", vectors=np.zeros((3, 2), np.int64))
    (tmp_path / "bad.json").write_text('{"sha256": "x"}')
    for path in ["novec.npz", "plain.npy", "ints.npz", "missing.npz"]:
        assert fp.main(["write", str(tmp_path / path), str(tmp_path / "out.json")]) == 2
        assert capsys.readouterr().err.startswith(f"stage1_fingerprint.py: {tmp_path / path}")
    good = _npz(tmp_path / "v.npz", _vectors())
    assert fp.main(["check", good, str(tmp_path / "bad.json")]) == 2
    assert "not a fingerprint" in capsys.readouterr().err
    assert fp.main(["check", good, str(tmp_path / "none.json")]) == 2


@pytest.mark.slow  # child processes
def test_cli_exit_codes(tmp_path):
    v = _vectors()
    script = os.path.join(SCRIPTS, "stage1_fingerprint.py")
    env = {**os.environ, "PYTHONPATH": ROOT}

    def run(*args):
        return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True,
                              text=True, env=env, timeout=120)

    recorded = tmp_path / "fingerprint.json"
    assert run("write", _npz(tmp_path / "v.npz", v), recorded).returncode == 0
    same = run("check", tmp_path / "v.npz", recorded)
    assert (same.returncode, same.stdout) == (0, "same vectors (sha256 equal)\n")
    rounded = run("check", _npz(tmp_path / "r.npz", _rounded(v, 1.3e-6)), recorded)
    assert rounded.returncode == 0 and "same vectors up to rounding" in rounded.stdout
    other = run("check", _npz(tmp_path / "o.npz", v * np.float32(1.01)), recorded)
    assert other.returncode == 1 and other.stderr.startswith("other vectors: ")
    assert run("check", tmp_path / "missing.npz", recorded).returncode == 2
