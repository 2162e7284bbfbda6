"""A workdir is checked before any work and used by one run at a time (cfimage/workdir.py).

The lock is a real flock held by a real other process (a forked child), and the end-to-end
test starts two real `python -m cfimage.train` runs on one workdir."""

import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cfimage import workdir
from cfimage.errors import UserError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _child_holding(path):
    """Forks a child that claims `path` and holds it until told; returns (pid, tell_exit)."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: claim, report, wait, then die without releasing
        try:
            workdir.claim(path, log=lambda message: None)
            os.write(ready_w, b"1")
        except BaseException:
            os.write(ready_w, b"0")
            os._exit(1)
        os.read(go_r, 1)
        os._exit(0)  # no atexit, no release: as a killed run leaves it
    os.close(ready_w)
    os.close(go_r)
    assert os.read(ready_r, 1) == b"1", "the child could not claim the workdir"
    os.close(ready_r)

    def tell_exit():
        os.write(go_w, b"1")
        os.close(go_w)
        os.waitpid(pid, 0)
    return pid, tell_exit


def test_a_workdir_held_by_a_live_process_is_refused_naming_pid_and_host(tmp_path):
    run = tmp_path / "run"
    pid, tell_exit = _child_holding(str(run))
    try:
        with pytest.raises(UserError) as refused:
            workdir.claim(str(run), log=lambda message: None)
        message = str(refused.value)
        assert f"--workdir={run} is in use by process {pid} on host {socket.gethostname()}" \
            in message
        assert "give another --workdir" in message and "\n" not in message
        assert json.loads((run / workdir.LOCK_NAME).read_text())["pid"] == pid
    finally:
        tell_exit()


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_log_line(tmp_path):
    run = tmp_path / "run"
    pid, tell_exit = _child_holding(str(run))
    tell_exit()  # the child dies holding the lock: its file stays, the flock does not
    assert json.loads((run / workdir.LOCK_NAME).read_text())["pid"] == pid
    notes = []
    try:
        workdir.claim(str(run), log=notes.append)
        assert len(notes) == 1 and notes[0].startswith(
            f"workdir: took over the stale lock of process {pid} on host "
            f"{socket.gethostname()}, started ")
        assert notes[0].endswith(": that run ended without releasing it (killed?)")
        assert json.loads((run / workdir.LOCK_NAME).read_text())["pid"] == os.getpid()
        workdir.claim(str(run), log=notes.append)  # this process again: the same lock
    finally:
        workdir.release(str(run))
    assert not (run / workdir.LOCK_NAME).exists()  # a clean release leaves no lock file


def test_a_lock_file_with_a_dead_pid_and_no_flock_is_stale(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that has certainly ended
    (tmp_path / workdir.LOCK_NAME).write_text(json.dumps(
        {"pid": child.pid, "host": "elsewhere", "started": "then", "command": "x"}))
    notes = []
    try:
        workdir.claim(str(tmp_path), log=notes.append)
    finally:
        workdir.release(str(tmp_path))
    assert notes == [f"workdir: took over the stale lock of process {child.pid} on host "
                     "elsewhere, started then (x): that run ended without releasing it "
                     "(killed?)"]


def test_released_lock_can_be_claimed_at_once_by_another_process(tmp_path):
    workdir.claim(str(tmp_path), log=lambda message: None)
    workdir.release(str(tmp_path))
    pid, tell_exit = _child_holding(str(tmp_path))  # would fail if the lock were still held
    tell_exit()


def test_a_file_or_a_path_through_a_file_is_not_a_workdir(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match=r"^--workdir=.*notes\.txt: exists and is not a "
                                        "directory; give a directory"):
        workdir.claim(str(a_file))
    with pytest.raises(UserError, match=r"notes\.txt/run: cannot be created \(a part of the "
                                        r"path is a file"):
        workdir.claim(str(a_file / "run"))
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("code,reason", [
    (errno.ENOSPC, "no space left on the device"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
])
def test_a_workdir_that_cannot_be_written_fails_in_one_line(tmp_path, monkeypatch, code, reason):
    """A full disk cannot be made without privileges here: the probe's write fails as the
    kernel would make it fail (the same OSError), and nothing is left behind."""
    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(workdir.os, "fsync", failing_fsync)
    with pytest.raises(UserError) as failed:
        workdir.claim(str(tmp_path / "run"), log=lambda message: None)
    assert str(failed.value) == (f"--workdir={tmp_path / 'run'}: cannot write into it "
                                 f"({reason}); give a directory you can write to, on a disk "
                                 "with free space")
    assert os.listdir(tmp_path / "run") == []  # the probe is removed, no lock was taken


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused(tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot write into it .permission denied"):
            workdir.claim(str(read_only))
    finally:
        read_only.chmod(0o755)


@pytest.mark.parametrize("cluster,task,lock", [
    ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 1}, "cfimage-worker-1.lock"),
    ({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 0}, workdir.LOCK_NAME),
    ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "worker", "index": 0},
     "cfimage-worker-0.lock"),
    ({"chief": ["c:0"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, workdir.LOCK_NAME),
])
def test_each_worker_of_a_cluster_locks_its_own_file_and_the_chief_the_workdirs(
        tmp_path, monkeypatch, cluster, task, lock):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    try:
        assert workdir.claim(str(tmp_path), multi_worker=True) == str(tmp_path / lock)
    finally:
        workdir.release(str(tmp_path), multi_worker=True)


def _cli(module, *args, cwd):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd,
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow  # four child processes; cfimage.train imports TensorFlow
def test_every_entry_point_refuses_a_file_as_workdir_in_one_line(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for module, more in [("cfimage.train", []), ("cfimage.diagnose", []),
                         ("cfimage.experiment", []),
                         ("cfimage.coldstart", [f"--runs={tmp_path}/cells/*"])]:
        done = _cli(module, f"--workdir={a_file}", *more, cwd=tmp_path)
        assert done.returncode == 1, (module, done.stderr[-2000:])
        assert done.stderr.strip().splitlines()[-1] == (
            f"cfimage: error: --workdir={a_file}: exists and is not a directory; give a "
            "directory (new or the workdir of an earlier run)"), (module, done.stderr[-2000:])
        assert "Traceback" not in done.stderr


@pytest.mark.slow  # two real training runs (about a minute each on a shared CPU)
def test_a_second_run_on_a_workdir_in_use_is_refused_and_the_first_exports_intact(tmp_path):
    run, exports = tmp_path / "run", tmp_path / "saved_models"
    flags = ["--demo_items=60", "--demo_users=40", "--image_size=32", "--weights=none",
             "--backbone=efficientnet_lite0",  # the smaller graph: a faster child process
             "--epochs=1", "--cf_epochs=1", "--threads=1", f"--workdir={run}",
             f"--export_dir={exports}", "--model_name=m"]
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "cfimage.train", *flags], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        deadline = time.time() + 240
        while not (run / workdir.LOCK_NAME).exists():  # the first run holds the workdir
            assert first.poll() is None and time.time() < deadline, first.stdout.read()
            time.sleep(0.2)
        second = _cli("cfimage.train", *flags, cwd=tmp_path)
        output, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines()[-1].startswith(
        f"cfimage: error: --workdir={run} is in use by process {first.pid} on host "
        f"{socket.gethostname()}, started ")
    assert "python -m cfimage.train --demo_items=60" in second.stderr
    assert first.returncode == 0, output[-3000:]
    assert sorted(os.listdir(exports / "m")) == ["1"]
    assert (exports / "m" / "1" / "saved_model.pb").is_file()
    assert json.loads((exports / "m" / "1" / "assets.extra" / "cfimage.json").read_text())[
        "workdir"] == str(run)
    assert not (run / workdir.LOCK_NAME).exists()  # released at the end of the first run


def test_a_bad_tf_config_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="^TF_CONFIG is not valid: "):
        workdir.claim(str(tmp_path), multi_worker=True)
