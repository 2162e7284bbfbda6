"""TensorBoard, checked through TensorBoard itself: a tiny experiment (two cells) is trained,
then the real `tensorboard` serves its logs on loopback and its HTTP API is asked what a user's
browser would ask: the scalar tags, the embedding projector's run and metadata, and the
hparams sessions (one per cell when pointed at the experiment's cells/)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TINY = ["--demo_items=60", "--demo_users=40", "--image_size=32", "--weights=none",
        "--epochs=1", "--cf_epochs=1", "--train_backbone=false",
        "--backbone=efficientnet_lite0"]  # heads on cached features: what grids train


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    """`tensorboard --logdir LOGDIR` on 127.0.0.1, a free port; stopped by stop()."""

    def __init__(self, logdir, log_path):
        self.port = _free_port()
        self.log = open(log_path, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", f"--logdir={logdir}",
             "--host=127.0.0.1", f"--port={self.port}", "--reload_interval=1"],
            stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path, body=None):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"} if body is not None else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            data = response.read()
        return json.loads(data) if response.headers.get_content_type() == \
            "application/json" else data.decode()

    def wait_for(self, path, ready, body=None, seconds=60):
        """The answer to `path` once `ready(answer)`; fails after `seconds` (polling)."""
        deadline, answer = time.time() + seconds, None
        while time.time() < deadline:
            assert self.process.poll() is None, "tensorboard exited"
            try:
                answer = self.get(path, body)
                if ready(answer):
                    return answer
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise AssertionError(f"{path}: not ready after {seconds} s; last answer {answer!r}")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _sessions(board):
    body = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS",
                                                      "STATUS_FAILURE", "STATUS_RUNNING"],
            "colParams": [], "startIndex": 0, "sliceSize": 100}
    return board.wait_for("/data/plugin/hparams/session_groups",
                          lambda answer: answer.get("sessionGroups"), body=body)


@pytest.mark.slow  # an experiment of two tiny cells (three training processes), two servers
def test_tensorboard_serves_scalars_projector_and_hparams_of_runs_and_cells(tmp_path):
    experiment = tmp_path / "experiment"
    done = subprocess.run(
        [sys.executable, "-m", "cfimage.experiment", f"--workdir={experiment}",
         "--arms=image_only,multitask", "--label_ratios=1.0", "--cf_weights=1", "--seeds=0",
         "--threads_per_cell=1", "--cells_per_process=2", f"--train_flags={','.join(TINY)}"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = sorted(os.listdir(experiment / "cells"))
    assert len(cells) == 2
    run = experiment / "cells" / cells[1]

    board = TensorBoard(run / "tensorboard", tmp_path / "tensorboard_run.log")
    try:
        # Scalars: the Keras curves of stage 2 and the final metrics beside the hparams.
        tags = board.wait_for("/data/plugin/scalars/tags",
                              lambda answer: {"train", "validation", "hparams"} <= set(answer))
        assert "epoch_loss" in tags["train"] and "epoch_map" in tags["validation"]
        assert "final/test_macro_map" in tags["hparams"]

        # The projector: the embeddings folder is a run, with its metadata.
        runs = board.wait_for("/data/plugin/projector/runs", lambda answer: answer)
        assert runs == ["embeddings"]
        info = board.get("/data/plugin/projector/info?run=embeddings")
        (embedding,) = info["embeddings"]
        assert embedding["metadataPath"] == "metadata.tsv"
        items = int(subprocess.check_output(  # the run's own vector count, from its file
            [sys.executable, "-c", "import numpy, sys; print(len(numpy.load(sys.argv[1])"
             "['ids']))", str(experiment / "stage1" / "cf_embeddings.npz")]))
        assert [int(d) for d in embedding["tensorShape"]][0] == items
        metadata = board.get("/data/plugin/projector/metadata?run=embeddings&name="
                             + urllib.parse.quote(embedding["tensorName"]))
        lines = metadata.strip().split("\n")
        assert lines[0] == "item_id\tlabels" and len(lines) == items + 1

        # Hparams: this run is one session with its settings and final metrics.
        found = board.wait_for("/data/plugin/hparams/experiment",
                               lambda answer: answer.get("hparamInfos"),
                               body={"experimentName": ""})
        names = {info["name"] for info in found["hparamInfos"]}
        assert {"arm", "cf_weight", "label_ratio", "seed", "backbone", "image_size"} <= names
        (group,) = _sessions(board)["sessionGroups"]
        assert group["hparams"]["arm"] == "multitask" and group["hparams"]["image_size"] == \
            "32x32"
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        test = json.loads((run / "metrics.json").read_text())["test"]
        assert metrics["final/test_macro_map"] == pytest.approx(test["macro_map"], abs=1e-6)
    finally:
        board.stop()

    board = TensorBoard(experiment / "cells", tmp_path / "tensorboard_cells.log")
    try:  # pointed at the cells: one session per cell, told apart by their arm
        groups = _sessions(board)["sessionGroups"]
        assert sorted(g["hparams"]["arm"] for g in groups) == ["image_only", "multitask"]
        assert sorted(s["name"] for g in groups for s in g["sessions"]) == [
            f"{cell}/tensorboard/hparams" for cell in cells]
        assert all(len(g["metricValues"]) == 3 for g in groups)
    finally:
        board.stop()
