"""The export of a cached-feature run (--train_backbone=false) is a whole model from image
bytes: served by a fresh process that never imports cfimage, it gives the scores that the
trained heads give on the cached features, and classifies a JPEG."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from cfimage.catalogue import reader
from cfimage.stage2 import features
from cfimage.stage2 import model as model_lib

pytestmark = pytest.mark.slow  # trains and serves in child processes

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_export_of_a_cached_run_serves_what_the_heads_predict(tmp_path):
    args = ["--demo_items=120", "--demo_users=60", "--image_size=32", "--epochs=2",
            "--batch_size=16", "--cf_epochs=1", "--cf_dim=8", "--backbone=efficientnet_lite0",
            "--train_backbone=false", "--adapter_units=64", f"--workdir={tmp_path}/run",
            f"--export_dir={tmp_path}/saved", "--model_name=tiny", "--threads=1"]
    result = subprocess.run([sys.executable, "-m", "cfimage.train", *args], cwd=str(tmp_path),
                            env={**os.environ, "PYTHONPATH": os.path.abspath(ROOT)},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stage2"]["train_backbone"] is False
    assert metrics["stage2"]["feature_cache"] == str(run / "features")
    config = json.loads((run / "config.json").read_text())["stage2"]
    assert (config["train_backbone"], config["adapter_units"]) == (False, 64)
    export = tmp_path / "saved" / "tiny" / "1"
    meta = json.loads((export / "assets.extra" / "cfimage.json").read_text())
    assert meta["signatures"] == ["serving_default", "predict_pixels", "embed",
                                  "similar_items", "audience"]
    assert meta["train_backbone"] is False

    # What the chosen heads predict on the cached (plain) features of a few items.
    catalogue = reader.load_catalogue(str(run / "demo_catalogue"))
    paths = [str(path) for path in catalogue.image_paths[:6]]
    plain = features.per_view(str(run / "features"), paths, "efficientnet_lite0", "none",
                              (32, 32), ("plain",), log=lambda _: None)
    assert plain.computed == 0  # the run cached them in <workdir>/features
    heads = model_lib.build_heads(plain.views["plain"].shape[1], catalogue.num_classes, True,
                                  8, adapter_units=64)
    heads.load_weights(str(run / "checkpoints" / "best.weights.h5"))
    expected = heads.predict(plain.views["plain"], verbose=0)["labels"]
    assert expected.std(axis=0).max() > 1e-3  # scores that differ between the images

    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        serve = tf.saved_model.load({str(export)!r}).signatures["serving_default"]
        images = [open(path, "rb").read() for path in {paths!r}]
        jpeg = tf.io.encode_jpeg(tf.io.decode_png(images[0], channels=3)).numpy()
        scores = serve(images=tf.constant(images))["scores"].numpy()
        out = serve(images=tf.constant([jpeg]))
        assert "cfimage" not in sys.modules
        print(json.dumps({{"scores": scores.tolist(),
                          "jpeg": out["scores"].numpy()[0].tolist(),
                          "top": out["top_k_labels"].numpy()[0][0].decode()}}))
    """)
    served = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": ""})
    assert served.returncode == 0, served.stderr[-3000:]
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(answer["scores"], expected, rtol=1e-4, atol=1e-5)
    jpeg = np.asarray(answer["jpeg"])
    assert jpeg.shape == (catalogue.num_classes,) and np.all((jpeg > 0) & (jpeg < 1))
    assert answer["top"] == catalogue.label_names[int(jpeg.argmax())]
