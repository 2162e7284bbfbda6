"""classify_items of a hybrid export (cfimage/serving/export.py), checked the way TF Serving sees
it: a tiny hybrid run on cached features, its export served by a fresh process that never
imports cfimage and by the TF1 loader. An unknown or empty id gives serving_default's scores
exactly, a known id uses the item's vector, bad ids do not crash the server, and the warm-up
records and the client's requests replay. Then a refreshed table (cfimage/serving/refresh.py)
gives a new item its vector without retraining."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from cfimage.catalogue import reader
from cfimage.errors import UserError
from cfimage.serving import export, refresh
from cfimage.stage1 import embedding_files
from tests.serving.test_signatures import _load_client

pytestmark = pytest.mark.slow  # trains and serves in child processes

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

SERVER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    path, work = sys.argv[1], sys.argv[2]
    case = json.load(open(work + "/case.json"))
    images = [open(p, "rb").read() for p in case["paths"]]
    signatures = tf.saved_model.load(path).signatures
    n = len(images)

    def classify(ids):
        return signatures["classify_items"](images=tf.constant(images),
                                            item_ids=tf.constant(ids, tf.string))

    out = {"signatures": sorted(signatures)}
    out["default"] = signatures["serving_default"](images=tf.constant(images))["scores"].numpy()
    known = classify([i.encode() for i in case["known"]])
    out["known"] = known["scores"].numpy()
    out["known_top"] = known["top_k_labels"].numpy()[:, 0].astype(str).tolist()
    bad = [b"", b"no-such-item", b"x" * 100000, b"\\xff\\xfe\\x80 not utf-8"]
    out["bad"] = [classify([ids] * n)["scores"].numpy() for ids in bad]
    try:
        classify([b""] * (n + 1))
        out["mismatch"] = "no error"
    except tf.errors.InvalidArgumentError as error:
        out["mismatch"] = error.message
    out["after"] = classify([b""] * n)["scores"].numpy()

    out["replayed"] = []
    for line in open(work + "/requests.txt").read().split():
        request = predict_pb2.PredictRequest.FromString(open(line, "rb").read())
        feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        result = signatures[request.model_spec.signature_name](**feed)
        out["replayed"].append([line, request.model_spec.signature_name, sorted(result)])

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta.signature_def["classify_items"]
        fetch = signature.outputs["scores"].name
        feed = {signature.inputs["images"].name: images}
        out["tf1_known"] = session.run(fetch, {**feed, signature.inputs["item_ids"].name:
                                               [i.encode() for i in case["known"]]})
        out["tf1_unknown"] = session.run(fetch, {**feed, signature.inputs["item_ids"].name:
                                                 [b"\\xff"] * n})
    assert "cfimage" not in sys.modules
    print(json.dumps({k: np.asarray(v).tolist() if k not in ("replayed", "mismatch",
                                                             "signatures", "known_top")
                      else v for k, v in out.items()}))
""")


def _serve(path, work, paths, known):
    (work / "case.json").write_text(json.dumps({"paths": paths, "known": known}))
    result = subprocess.run([sys.executable, "-c", SERVER_SCRIPT, path, str(work)],
                            capture_output=True, text=True, timeout=300, cwd=str(work),
                            env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny hybrid run (cached features, two epochs), exported, and served once."""
    tmp = tmp_path_factory.mktemp("hybrid")
    args = ["--demo_items=120", "--demo_users=60", "--image_size=32", "--epochs=2",
            "--batch_size=16", "--cf_epochs=1", "--cf_dim=8", "--backbone=efficientnet_lite0",
            "--train_backbone=false", "--adapter_units=8", "--arm=hybrid",
            "--cf_input_dropout=0.5", "--warm_buckets=1,20", f"--workdir={tmp}/run",
            f"--export_dir={tmp}/saved", "--model_name=tiny", "--threads=1"]
    result = subprocess.run([sys.executable, "-m", "cfimage.train", *args], cwd=str(tmp),
                            env={**os.environ, "PYTHONPATH": ROOT},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    path = str(tmp / "saved" / "tiny" / "1")
    catalogue = reader.load_catalogue(str(tmp / "run" / "demo_catalogue"))
    ids, _ = embedding_files.load_embeddings(str(tmp / "run" / "cf_embeddings.npz"))
    rows = [int(np.flatnonzero(catalogue.item_ids == item)[0]) for item in ids[:4]]
    paths = [str(catalogue.image_paths[row]) for row in rows]

    # Requests to replay: the warm-up records and the client's classify_items request.
    work = tmp / "serve"
    work.mkdir()
    requests = []
    warmup = os.path.join(path, "assets.extra", export.WARMUP_FILE)
    for i, record in enumerate(tf.data.TFRecordDataset(warmup).as_numpy_iterator()):
        requests.append(work / f"warmup{i}.pb")
        requests[-1].write_bytes(prediction_log_pb2.PredictionLog.FromString(
            record).predict_log.request.SerializeToString())
    client = _load_client()
    images = [open(p, "rb").read() for p in paths[:2]]
    requests.append(work / "client_classify_items.pb")
    requests[-1].write_bytes(client.predict_request("tiny", "classify_items", images,
                                                    item_ids=[str(ids[0]), ""])
                             .SerializeToString())
    (work / "requests.txt").write_text("\n".join(str(f) for f in requests))
    return {"tmp": tmp, "path": path, "paths": paths, "ids": [str(i) for i in ids[:4]],
            "work": work, "client": client, "images": images,
            "served": _serve(path, work, paths, [str(i) for i in ids[:4]])}


def test_metrics_report_both_views_and_the_buckets(run):
    metrics = json.loads((run["tmp"] / "run" / "metrics.json").read_text())
    test = metrics["test"]
    assert test["views"]["cold"]["macro_map"] == test["macro_map"]  # top level: cold view
    assert 0 < test["views"]["warm"]["num_items"] <= test["num_items"]
    assert {b["interactions"] for b in test["warm_buckets"]} <= {"0", "1-19", "20+"}
    assert sum(b["num_items"] for b in test["warm_buckets"]) == test["views"]["warm"][
        "num_items"]
    assert metrics["stage2"]["cf_input"] and metrics["stage2"]["selection_view"] == "cold"
    meta = json.loads((open(os.path.join(run["path"], "assets.extra", "cfimage.json"))).read())
    assert meta["hybrid"] and meta["signatures"][-1] == "classify_items"


def test_unknown_or_empty_ids_are_serving_default_exactly(run):
    served = run["served"]
    default = np.asarray(served["default"])
    assert default.std(axis=0).max() > 1e-4  # the images get different scores
    for scores in served["bad"]:  # "", unknown, 100,000 bytes, not UTF-8: the image path
        np.testing.assert_array_equal(scores, default)
    np.testing.assert_array_equal(served["after"], default)
    np.testing.assert_array_equal(served["tf1_unknown"], default)


def test_a_known_id_uses_the_items_vector(run):
    served = run["served"]
    known, default = np.asarray(served["known"]), np.asarray(served["default"])
    assert np.abs(known - default).max(axis=1).min() > 1e-4  # every item's scores move
    np.testing.assert_allclose(served["tf1_known"], known, atol=1e-6)
    assert "one item id per image" in served["mismatch"]


def test_warmup_and_client_requests_cover_classify_items(run):
    replayed = {os.path.basename(r[0]): r[1:] for r in run["served"]["replayed"]}
    warmup = sorted(signature for name, (signature, _) in replayed.items()
                    if name.startswith("warmup"))
    assert warmup == run["served"]["signatures"]
    assert replayed["client_classify_items.pb"] == [
        "classify_items", ["label_names", "scores", "top_k_labels", "top_k_scores"]]
    body = run["client"].rest_request_body("classify_items", run["images"], ["a", ""])
    assert set(body["instances"][0]) == {"images", "item_ids"}
    with pytest.raises(ValueError, match="one item id per image"):
        run["client"].signature_inputs("classify_items", run["images"], ["a"])


def test_a_refreshed_table_gives_a_new_item_its_vector_without_retraining(run):
    tmp = run["tmp"]
    ids, vectors = embedding_files.load_embeddings(str(tmp / "run" / "cf_embeddings.npz"))
    # The new item borrows the first item's vector: its scores become that item's.
    new_ids = np.concatenate([ids, ["added-later"]])
    new_vectors = np.concatenate([vectors, vectors[:1]])
    embedding_files.save_embeddings(str(tmp / "new.npz"), new_ids, new_vectors)
    # Another space (rotated and shifted): refused as it is, accepted once aligned.
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))[0]
    embedding_files.save_embeddings(str(tmp / "other.npz"), new_ids,
                                    new_vectors @ rotation + 2.0)
    with pytest.raises(UserError, match="not in the stage-1 space the model was trained"):
        refresh.refresh_item_table(run["path"], str(tmp / "other.npz"), log=lambda _: None)
    path = refresh.refresh_item_table(run["path"], str(tmp / "other.npz"), align="linear",
                                      log=lambda _: None)
    assert path.endswith(os.path.join("tiny", "2"))
    served = _serve(path, run["work"], run["paths"], ["added-later", "", "", ""])
    # Image 0 with the new id scores as it did with its own item's id (the same vector, mapped
    # back into the training space); the others, without an id, as serving_default.
    np.testing.assert_allclose(served["known"][0], run["served"]["known"][0], atol=1e-5)
    np.testing.assert_array_equal(served["known"][1:], run["served"]["default"][1:])
    np.testing.assert_array_equal(served["default"], run["served"]["default"])
