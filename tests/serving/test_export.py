"""The export is checked the way TF Serving sees it: loaded without cfimage."""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from cfimage.stage2 import data
from cfimage.serving import export
from cfimage.stage2 import model as model_lib

SIZE = (40, 32)


def _images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(50, 40, 3), dtype=np.uint8)
    b = rng.integers(0, 256, size=(20, 70, 1), dtype=np.uint8)
    return [tf.io.encode_jpeg(a).numpy(), tf.io.encode_png(b).numpy()]


@pytest.mark.slow
def test_export_layout_signature_and_fresh_process_scores(tmp_path):
    model = model_lib.build_model("efficientnet_b0", "none", SIZE, 3, True, 4)
    notes = []
    path = export.export_saved_model(model, ["x", "y", "z"], SIZE, str(tmp_path), "demo",
                                     log=notes.append)
    assert notes == ["export: no cf_scaling, so no embed/similar_items/audience signatures"]
    with open(os.path.join(path, "assets.extra", "cfimage.json")) as f:
        assert json.load(f)["signatures"] == ["serving_default", "predict_pixels"]
    assert path == os.path.join(str(tmp_path), "demo", "1")
    assert sorted(os.listdir(tmp_path / "demo")) == ["1"]  # no temporary directory left
    assert export.next_version(str(tmp_path / "demo")) == 2
    with open(os.path.join(path, "assets.extra", "labels.txt")) as f:
        assert f.read().split() == ["x", "y", "z"]

    images = _images()
    pixels = np.stack([data.decode_and_resize(b, SIZE).numpy() for b in images])
    expected = np.asarray(model(pixels.astype(np.float32), training=False)["labels"])
    for i, b in enumerate(images):
        (tmp_path / f"img{i}").write_bytes(b)

    # A fresh interpreter that never imports cfimage, as a serving process would.
    script = textwrap.dedent(f"""
        import json, sys
        import tensorflow as tf
        assert "cfimage" not in sys.modules
        model = tf.saved_model.load({path!r})
        serve = model.signatures["serving_default"]
        images = [open({str(tmp_path)!r} + f"/img{{i}}", "rb").read() for i in range(2)]
        out = serve(images=tf.constant(images))
        print(json.dumps({{"scores": out["scores"].numpy().tolist(),
                          "dtype": out["scores"].dtype.name,
                          "names": [[n.decode() for n in row]
                                    for row in out["label_names"].numpy()]}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": ""},
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["dtype"] == "float32"
    assert served["names"] == [["x", "y", "z"]] * 2
    np.testing.assert_allclose(served["scores"], expected, atol=1e-4)


@pytest.mark.slow
def test_saved_model_cli_lists_the_signature(tmp_path):
    model = model_lib.build_model("efficientnet_b0", "none", SIZE, 2, True, 3)
    path = export.export_saved_model(model, ["a", "b"], SIZE, str(tmp_path), "m", version=7)
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "signature_def['serving_default']" in result.stdout
    assert "inputs['images']" in result.stdout and "dtype: DT_STRING" in result.stdout
    assert "outputs['scores']" in result.stdout and "outputs['label_names']" in result.stdout


@pytest.mark.slow  # a whole SavedModel export: about a minute here
def test_without_user_vectors_audience_is_left_out_with_a_note(tmp_path):
    model = model_lib.build_model("efficientnet_b0", "none", SIZE, 2, True, 3)
    notes = []
    path = export.export_saved_model(
        model, ["a", "b"], SIZE, str(tmp_path), "m", cf_scaling={"mean": [0, 0, 0], "scale": 1},
        item_ids=["p", "q"], item_vectors=np.eye(2, 3), log=notes.append)
    assert len(notes) == 1 and "audience left out" in notes[0]
    with open(os.path.join(path, "assets.extra", "cfimage.json")) as f:
        meta = json.load(f)
    assert meta["signatures"] == ["serving_default", "predict_pixels", "embed", "similar_items"]
    assert meta["num_items"] == 2 and meta["num_users"] == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"item_ids": ["a"], "item_vectors": np.zeros((1, 3))}, "without cf_scaling"),
    ({"cf_scaling": {"mean": [0, 0], "scale": 1.0}}, "mean of length 3"),
    ({"cf_scaling": {"mean": [0, 0, 0], "scale": 1.0}, "item_ids": ["a"],
      "item_vectors": np.zeros((1, 4))}, "shape (n, 3)"),
    ({"cf_scaling": {"mean": [0, 0, 0], "scale": 1.0}, "user_ids": ["a", "b"],
      "user_vectors": np.zeros((1, 3))}, "one id per vector"),
    ({"cf_scaling": {"mean": [0, 0, 0], "scale": 1.0}, "user_ids": ["a"]}, "both ids"),
])
def test_bad_cf_tables_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    model = model_lib.build_model("efficientnet_b0", "none", SIZE, 2, True, 3)
    with pytest.raises(ValueError, match=re.escape(message)):
        export.export_saved_model(model, ["a", "b"], SIZE, str(tmp_path), "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_a_version_taken_meanwhile_by_another_export_moves_this_one_to_the_next(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "saved_model.pb").write_text("the other export's")
    (model_dir / ".tmp-1-9").mkdir()
    (model_dir / ".tmp-1-9" / "saved_model.pb").write_text("this export's")
    notes = []
    path = export.publish_version(str(model_dir / ".tmp-1-9"), str(model_dir), 1,
                                  log=notes.append)
    assert path == str(model_dir / "2") and sorted(os.listdir(model_dir)) == ["1", "2"]
    assert (model_dir / "1" / "saved_model.pb").read_text() == "the other export's"
    assert (model_dir / "2" / "saved_model.pb").read_text() == "this export's"
    assert notes == ["export: version 1 was written by another export meanwhile; this one is "
                     "version 2"]
    (model_dir / ".tmp-2-9").mkdir()
    (model_dir / ".tmp-2-9" / "x").write_text("")
    with pytest.raises(OSError):  # a version asked for explicitly is never changed
        export.publish_version(str(model_dir / ".tmp-2-9"), str(model_dir), 2, fixed=True)


def test_two_exports_racing_for_one_version_both_land_intact(tmp_path, monkeypatch):
    """Another run's export finishes version 1 while this one is being written (the window
    between choosing the version and renaming into it): this one becomes version 2."""
    from tests.test_faults import tiny_model
    model_dir = tmp_path / "m"
    cleanup = export.remove_stale_temporaries

    def other_export_lands(directory, log=print):  # runs just before this export writes
        (model_dir / "1").mkdir()
        (model_dir / "1" / "saved_model.pb").write_text("the other run's")
        return cleanup(directory, log=log)
    monkeypatch.setattr(export, "remove_stale_temporaries", other_export_lands)
    path = export.export_saved_model(tiny_model(SIZE), ["a", "b"], SIZE, str(tmp_path), "m",
                                     log=lambda message: None)
    assert path == str(model_dir / "2")
    assert (model_dir / "1" / "saved_model.pb").read_text() == "the other run's"
    assert tf.saved_model.load(path).signatures["serving_default"] is not None
    assert sorted(os.listdir(model_dir)) == ["1", "2"]
