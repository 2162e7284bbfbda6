"""Strategy choice, chief logic, and two real workers on 127.0.0.1 ending with equal weights."""

import json
import os
import socket
import subprocess
import sys
import time
import types

import h5py
import numpy as np
import pytest
import tensorflow as tf

from cfimage.catalogue import demo
from cfimage.stage2 import distribute

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def fake_strategy(task_type, task_id, cluster, replicas=2):
    """A stand-in with the attributes distribute.py reads (creating a real
    MultiWorkerMirroredStrategy would reconfigure this test process)."""
    resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                     cluster_spec=lambda: tf.train.ClusterSpec(cluster))
    return types.SimpleNamespace(cluster_resolver=resolver, num_replicas_in_sync=replicas)


def test_default_strategy_on_a_cpu_machine_is_one_replica_and_chief(tmp_path):
    strategy = distribute.make_strategy("auto")
    assert strategy.num_replicas_in_sync == 1
    assert distribute.is_chief(strategy)
    assert distribute.output_dir(str(tmp_path), strategy) == str(tmp_path)
    assert distribute.scaled(32, 3e-3, strategy) == (32, 3e-3)
    assert distribute.describe(strategy) == "default strategy (no distribution), 1 replica"
    assert distribute.make_strategy("one_device").num_replicas_in_sync == 1


def test_bad_name_and_missing_tf_config_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="choose one of auto, one_device"):
        distribute.make_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.make_strategy("multi_worker")


def test_chief_is_worker_0_or_the_chief_task(tmp_path):
    workers = {"worker": ["a:1", "b:2"]}
    assert distribute.is_chief(fake_strategy("worker", 0, workers))
    assert not distribute.is_chief(fake_strategy("worker", 1, workers))
    with_chief = {"chief": ["c:0"], "worker": ["a:1", "b:2"]}
    assert distribute.is_chief(fake_strategy("chief", 0, with_chief))
    assert not distribute.is_chief(fake_strategy("worker", 0, with_chief))
    other = distribute.output_dir(str(tmp_path), fake_strategy("worker", 1, workers))
    assert other == str(tmp_path / "workertemp_worker_1") and os.path.isdir(other)
    # 2 replicas: twice the images per step, twice the learning rate.
    assert distribute.scaled(16, 1e-3, fake_strategy("worker", 1, workers)) == (32, 2e-3)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def read_weights(path):
    with h5py.File(path, "r") as f:
        arrays = {}
        f.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_two_workers_train_to_identical_weights_with_synchronised_batchnorm(tmp_path):
    catalogue = demo.make_demo_catalogue(str(tmp_path / "catalogue"), seed=2, num_items=60,
                                         num_users=30, image_size=32)
    ids = [f"item{i:05d}" for i in range(60)]
    np.savez(tmp_path / "vectors.npz", ids=np.array(ids),
             vectors=np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32))
    workdir = tmp_path / "run"
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    args = [sys.executable, "-m", "cfimage.train", f"--catalogue={catalogue}",
            f"--cf_embeddings={tmp_path}/vectors.npz", "--strategy=multi_worker",
            # Lite0 (no squeeze-excite blocks): each worker traces the distributed step in
            # about half the time of the default B0, with as many BatchNormalization layers.
            "--backbone=efficientnet_lite0", "--weights=none",
            "--image_size=32", "--batch_size=8", "--epochs=1", "--threads=1", "--noexport",
            "--sync_batchnorm", f"--workdir={workdir}"]
    workers = []
    try:
        for index in range(2):
            env = {**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": "",
                   "TF_CONFIG": json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": index}})}
            log = open(tmp_path / f"worker{index}.log", "w")
            workers.append((subprocess.Popen(args, cwd=str(tmp_path), env=env, stdout=log,
                                             stderr=subprocess.STDOUT), log))
        deadline = time.time() + 420
        for process, _ in workers:
            process.wait(timeout=max(1, deadline - time.time()))
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    for (process, _), text in zip(workers, logs):
        assert process.returncode == 0, text[-4000:]
    assert "global batch 16 (--batch_size=8 per replica)" in logs[0]
    assert "with 2 replica(s), task worker:0 (chief)" in logs[0]
    assert "not the chief" in logs[1]
    # 42 training items (70%) / global batch 16 -> 3 steps, each worker taking half of a batch.
    assert "1 epochs of 3 steps" in logs[0]
    chief = read_weights(workdir / "checkpoints" / "best.weights.h5")
    other = read_weights(workdir / "workertemp_worker_1" / "checkpoints" / "best.weights.h5")
    assert chief.keys() == other.keys() and len(chief) > 100
    # Gradients are all-reduced, so every trainable weight is identical; with
    # --sync_batchnorm the batch statistics are all-reduced too, so BatchNormalization's
    # moving mean and variance (vars 2 and 3) are identical as well.
    assert "synchronised BatchNormalization in" in logs[0]
    moving = {name for name in chief if "batch_normalization" in name
              and name.rsplit("/", 1)[1] in ("2", "3")}
    assert len(moving) > 50
    for name in sorted(chief):
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    # The chief writes the run's outputs; worker 1 only into its temp dir.
    assert (workdir / "metrics.json").is_file() and (workdir / "history.csv").is_file()
    assert list((workdir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert (workdir / "workertemp_worker_1" / "metrics.json").is_file()
