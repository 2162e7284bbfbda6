"""End to end: the real entry point on a tiny generated catalogue, then the export served
by a fresh Python process that never imports cfimage."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # trains in child processes

ROOT = os.path.join(os.path.dirname(__file__), "..")
TINY = ["--demo_items=120", "--demo_users=60", "--image_size=32", "--epochs=2",
        "--batch_size=16", "--cf_epochs=2"]
# Runs that test something other than the end-to-end image model train heads on cached
# features (the same trainer code; tests/stage2/test_cached.py trains every arm there): that
# spares the backbone's tracing in each child process.
CACHED = ["--train_backbone=false", "--backbone=efficientnet_lite0", "--weights=none"]


def on_demo_catalogue(base):
    """Flags of a run on the module's demo catalogue: its cached runs share one feature cache
    (the first computes the features, the others read them)."""
    return [f"--catalogue={base}/run/demo_catalogue", f"--feature_cache={base}/features"]


def run_train(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
    return subprocess.run([sys.executable, "-m", "cfimage.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    result = run_train(TINY + [f"--workdir={base}/run", f"--export_dir={base}/saved",
                               "--model_name=tiny"], cwd=str(base))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return base, result.stdout


def test_run_prints_metrics_and_fills_the_workdir(demo_run):
    base, stdout = demo_run
    assert "stage 1: recall@10 two-tower" in stdout and "vs popularity" in stdout
    assert "macro mAP" in stdout and "precision@1" in stdout
    run = base / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["macro_map"] <= 1.0
    assert set(metrics["test"]["per_class_ap"]) <= {
        "cross", "diamond", "disc", "hstripe", "ring", "square", "triangle", "vstripe"}
    assert metrics["best_epoch"] in (1, 2)
    assert "recall@10" in metrics["stage1"] and "popularity_recall@10" in metrics["stage1"]
    assert metrics["arm"] == "multitask" and metrics["cf_weight"] == 2.0
    assert metrics["cf_confidence"] == "uniform"
    assert "--epochs=2" in (run / "flags.txt").read_text()
    config = json.loads((run / "config.json").read_text())
    assert config["stage1"]["two_tower"]["epochs"] == 2  # --cf_epochs, as stage 1 ran it
    assert config["stage1"]["two_tower"]["learning_rate"] == 0.1  # stage 1's own default
    assert config["stage2"]["image_size"] == [32, 32] and config["stage2"]["epochs"] == 2
    assert config["output"]["workdir"] == str(run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.json", "best.weights.h5"]
    assert (run / "checkpoints" / "best.weights.h5").is_file()
    assert not (run / "backup").exists()  # removed once training finished
    with np.load(run / "cf_embeddings.npz") as vectors:
        assert vectors["vectors"].shape[1] == 64 and len(vectors["ids"]) > 50
    tensorboard = run / "tensorboard"
    assert list((tensorboard / "train").glob("events.out.tfevents.*"))
    assert list((tensorboard / "validation").glob("events.out.tfevents.*"))
    assert (tensorboard / "embeddings" / "projector_config.pbtxt").is_file()
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_map" in history[0] and "cf_mse" in history[0]


def test_export_classifies_a_jpeg_in_a_fresh_process(demo_run):
    base, _ = demo_run
    export = base / "saved" / "tiny" / "1"
    assert (export / "saved_model.pb").is_file()
    script = textwrap.dedent(f"""
        import sys
        import tensorflow as tf
        png = tf.io.read_file({str(base / 'run' / 'demo_catalogue' / 'images' / 'item00003.png')!r})
        jpeg = tf.io.encode_jpeg(tf.io.decode_png(png, channels=3)).numpy()
        serve = tf.saved_model.load({str(export)!r}).signatures["serving_default"]
        out = serve(images=tf.constant([jpeg, jpeg]))
        assert "cfimage" not in sys.modules
        names = [n.decode() for n in out["label_names"].numpy()[0]]
        scores = out["scores"].numpy()
        print(scores.shape, ",".join(names), float(scores.min()), float(scores.max()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=str(base), env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    shape, names, low, high = result.stdout.strip().splitlines()[-1].rsplit(" ", 3)
    assert shape == "(2, 8)"
    assert names == "cross,diamond,disc,hstripe,ring,square,triangle,vstripe"
    assert 0.0 < float(low) <= float(high) < 1.0


def test_user_vectors_skip_stage_1(demo_run, tmp_path):
    base, _ = demo_run
    ids = [f"item{i:05d}" for i in range(0, 120, 2)]  # half the items: the rest are masked
    rng = np.random.default_rng(0)
    lines = ["item_id,v0,v1,v2"] + [f"{i},{a:.4f},{b:.4f},{c:.4f}"
                                    for i, (a, b, c) in zip(ids, rng.normal(size=(60, 3)))]
    (tmp_path / "vectors.csv").write_text("\n".join(lines) + "\n")
    result = run_train(TINY + [*on_demo_catalogue(base), "--epochs=1",
                               f"--cf_embeddings={tmp_path}/vectors.csv",
                               f"--workdir={tmp_path}/run", "--noexport", *CACHED],
                       cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "stage 1 skipped" in result.stdout
    assert "60/120 items have a vector (dim 3 -> 3)" in result.stdout
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize("flag,message", [
    ("--label_ratio=0", "--label_ratio=0.0: must be in (0, 1]"),
    ("--cf_weight=-1", "λ must be >= 0"),
    ("--image_size=8", "sides >= 32"),
    ("--backbone=resnet50", "unknown backbone 'resnet50'"),
])
def test_bad_flags_give_one_clear_message_before_any_work(tmp_path, flag, message):
    result = run_train(TINY + [flag, f"--workdir={tmp_path}/run", "--noexport"],
                       cwd=str(tmp_path))
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "stage 1: two-tower" not in result.stdout
    assert not (tmp_path / "run" / "demo_catalogue").exists()


def test_a_user_error_found_while_running_is_one_line_and_exit_status_1(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "bad.png").write_bytes(b"not an image")
    (tmp_path / "cat" / "items.csv").write_text("item_id,image,labels\nitem1,bad.png,a\n")
    (tmp_path / "cat" / "interactions.csv").write_text("user_id,item_id\nu1,item1\n")
    result = run_train(TINY + [f"--catalogue={tmp_path}/cat", f"--workdir={tmp_path}/run",
                               "--noexport"], cwd=str(tmp_path))
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"cfimage: error: {tmp_path}/cat/items.csv, line 2, item 'item1': image ")
    assert "--on_bad_image=skip" in result.stderr
    assert "Traceback" not in result.stderr


# Two-stage end to end (its CF-only phase trains the whole network), the others cached.
@pytest.mark.parametrize("arm_flags,expected", [
    (["--arm=two_stage", "--pretrain_epochs=1", "--backbone=efficientnet_lite0",
      "--weights=none"], "two-stage: phase 1, 1 epochs"),
    (["--arm=contrastive", "--cf_confidence=loss", *CACHED], "CF confidence weights (loss)"),
    (["--arm=image_only", "--cf_weight=3", *CACHED], "stage 2 (image_only, heads on cached "
     "features): 1 epochs of "),
])
def test_paper_baselines_and_variants_run(demo_run, tmp_path, arm_flags, expected):
    base, _ = demo_run
    result = run_train(TINY + [*on_demo_catalogue(base), "--epochs=1",
                               f"--cf_embeddings={base}/run/cf_embeddings.npz",
                               f"--workdir={tmp_path}/run", "--noexport", *arm_flags],
                       cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert expected in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["macro_map"] > 0
    assert metrics["arm"] == arm_flags[0].split("=")[1]
    # Only the arms that read --cf_weight train with it; the others say so in their log.
    assert metrics["cf_weight"] == {"contrastive": 2.0}.get(metrics["arm"], 0.0)
    assert f"λ = {metrics['cf_weight']} (the first step" in result.stdout


@pytest.mark.parametrize("options, model, loss, stage1_line", [
    # The paper's CF model, whitened targets, the score loss, and the export (of a cached run:
    # backbone + heads, tests/stage2/test_cached_export.py).
    (["--cf_model=mult_vae", "--cf_vae_epochs=3", "--cf_vae_batch_size=32",
      "--cf_target=pca_whiten:4", "--cf_loss=score", *CACHED], "mult_vae", "score",
     "recall@10 Mult-VAE"),
    # Heads on cached features, SVD vectors, unit-length targets, InfoNCE.
    (["--cf_model=svd", "--cf_target=l2", "--cf_loss=infonce", *CACHED, "--noexport"], "svd",
     "infonce", "recall@10 SVD model"),
])
def test_cf_model_target_and_loss_options_run(tmp_path, options, model, loss, stage1_line):
    result = run_train(TINY + [f"--workdir={tmp_path}/run", f"--export_dir={tmp_path}/saved",
                               "--model_name=options", *options], cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert stage1_line in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["stage1"]["cf_model"], metrics["cf_loss"]) == (model, loss)
    assert metrics["test"]["macro_map"] > 0
    scaling = json.loads((tmp_path / "run" / "cf_target.json").read_text())
    assert scaling == metrics["cf_scaling"]
    with np.load(tmp_path / "run" / "cf_embeddings.npz") as saved:
        dim = saved["vectors"].shape[1]
    with np.load(tmp_path / "run" / "user_embeddings.npz") as saved:
        assert saved["vectors"].shape[1] == dim
    if model != "mult_vae":
        return
    assert dim == 64 + 1  # decoder row + item bias
    assert np.asarray(scaling["matrix"]).shape == (4, dim)  # 4 whitened targets -> vectors
    export = next((tmp_path / "saved" / "options").iterdir())
    signatures = json.loads((export / "assets.extra" / "cfimage.json").read_text())
    assert {"embed", "similar_items", "audience"} <= set(signatures["signatures"])
    catalogue = tmp_path / "run" / "demo_catalogue"
    image = catalogue / (catalogue / "items.csv").read_text().splitlines()[1].split(",")[1]
    code = textwrap.dedent(f"""
        import tensorflow as tf
        model = tf.saved_model.load({str(export)!r})
        image = tf.constant([open({str(image)!r}, "rb").read()])
        print(tuple(model.signatures["embed"](images=image)["embedding"].shape))
    """)
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=300)
    assert f"(1, {dim})" in shown.stdout, shown.stderr[-2000:]
