"""Bad images are found before training; a killed run resumes where it was."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cfimage.stage2 import data
from cfimage.catalogue import demo

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def test_unreadable_images_are_found_and_odd_but_valid_ones_pass(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(pixels).numpy()
    files = {
        "good.png": tf.io.encode_png(pixels).numpy(),
        "grey.png": tf.io.encode_png(pixels[:, :, :1]).numpy(),
        "rgba.png": tf.io.encode_png(np.concatenate([pixels, pixels[:, :, :1]], 2)).numpy(),
        "sixteen.png": tf.io.encode_png(pixels.astype(np.uint16) * 257).numpy(),
        "good.jpg": jpeg,
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "text.png": b"this is not an image\n",
    }
    paths = []
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        paths.append(str(tmp_path / name))
    bad = data.find_unreadable_images(paths)
    unreadable = {os.path.basename(paths[i]) for i in bad}
    assert unreadable == {"empty.jpg", "truncated.jpg", "text.png"}
    assert "0 bytes" in bad[paths.index(str(tmp_path / "empty.jpg"))]


def _train_command(workdir, catalogue, *extra):
    return [sys.executable, "-m", "cfimage.train", f"--catalogue={catalogue}",
            "--image_size=32", "--batch_size=16", "--cf_epochs=2", f"--workdir={workdir}",
            "--backbone=efficientnet_lite0", "--weights=none",
            "--noexport", *extra]


def _env():
    return {**os.environ, "PYTHONPATH": ROOT}


@pytest.mark.slow
def test_bad_image_fails_with_its_line_or_is_skipped_and_reported(tmp_path):
    catalogue = demo.make_demo_catalogue(str(tmp_path / "cat"), seed=2, num_items=100,
                                         num_users=50, image_size=32)
    (tmp_path / "cat" / "images" / "item00004.png").write_bytes(b"\x89PNG broken")
    failed = subprocess.run(_train_command(tmp_path / "a", catalogue, "--epochs=1"),
                            capture_output=True, text=True, timeout=600, env=_env())
    assert failed.returncode != 0
    assert "items.csv, line 6, item 'item00004'" in failed.stderr
    assert "--on_bad_image=skip" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_epoch_and_skips_bad_images(tmp_path):
    catalogue = demo.make_demo_catalogue(str(tmp_path / "cat"), seed=2, num_items=100,
                                         num_users=50, image_size=32)
    (tmp_path / "cat" / "images" / "item00007.png").write_bytes(b"")
    command = _train_command(tmp_path / "run", catalogue, "--epochs=5", "--on_bad_image=skip")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=_env())
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("[cfimage] epoch 3:"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    first = "".join(seen)
    assert "skipped 1 item(s) with unreadable images" in first and "item00007" in first
    rows = (tmp_path / "run" / "skipped_images.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("item00007,")
    assert (tmp_path / "run" / "backup").is_dir()  # killed before finishing

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_env())
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "stage 1 already done in this workdir" in resumed.stdout
    assert "resuming stage 2" in resumed.stdout
    assert "[cfimage] epoch 1:" not in resumed.stdout and "[cfimage] epoch 2:" not in \
        resumed.stdout
    assert "[cfimage] epoch 5:" in resumed.stdout
    assert not (tmp_path / "run" / "backup").exists()
    assert (tmp_path / "run" / "metrics.json").is_file()
