"""Every serving signature, checked the way TF Serving sees the export: loaded by a
fresh Python process that never imports cfimage, fed real JPEG/PNG bytes, compared
with the in-process Keras model and with a numpy top-k over the same CF tables."""

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from cfimage.stage2 import cf_targets, data
from cfimage.serving import export
from cfimage.stage2 import model as model_lib

SIZE = (40, 32)
LABELS = ["cat", "dog", "fish"]
CF_DIM, TOP_K = 8, 6
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _load_client():
    spec = importlib.util.spec_from_file_location("client", os.path.join(ROOT, "scripts",
                                                                         "client.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _plain_signatures(client):
    """The client's signatures that a model without the CF input exports (classify_items is
    a hybrid model's: tests/serving/test_classify_items.py)."""
    return [signature for signature in client.SIGNATURES if signature != "classify_items"]


def _images():
    """Named encoded images: colour, greyscale, alpha, 16-bit, CMYK; odd sizes and aspects."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(50, 40, 3), dtype=np.uint8)
    images = {
        "rgb.jpg": tf.io.encode_jpeg(pixels).numpy(),
        "grey.png": tf.io.encode_png(rng.integers(0, 256, (20, 70, 1), np.uint8)).numpy(),
        "rgba.png": tf.io.encode_png(rng.integers(0, 256, (33, 33, 4), np.uint8)).numpy(),
        "deep.png": tf.io.encode_png(rng.integers(0, 65536, (64, 24, 3), np.uint16)).numpy(),
        "grey.jpg": tf.io.encode_jpeg(rng.integers(0, 256, (90, 30, 1), np.uint8)).numpy(),
    }
    try:
        from PIL import Image
    except ImportError:  # CMYK JPEGs need an encoder that writes them; TF cannot
        return images
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buffer, format="JPEG")
    images["cmyk.jpg"] = buffer.getvalue()
    return images


# The fresh process: loads the SavedModel with TF only, calls every signature,
# survives garbage, replays serialized PredictRequests, and runs the TF1 loader.
SERVER_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    assert "cfimage" not in sys.modules
    path, work = sys.argv[1], sys.argv[2]
    inputs = json.load(open(work + "/inputs.json"))
    images = [open(work + "/" + name, "rb").read() for name in inputs["names"]]
    loaded = tf.saved_model.load(path)
    signatures = loaded.signatures

    def plain(value):
        if value.dtype == tf.string:
            return np.vectorize(lambda b: b.decode())(value.numpy()).tolist()
        return value.numpy().tolist()

    def run(name, **kwargs):
        return {k: plain(v) for k, v in signatures[name](**kwargs).items()}

    out = {"signatures": sorted(signatures)}
    for name in ["serving_default", "embed", "similar_items", "audience"]:
        out[name] = run(name, images=tf.constant(images))
    pixels = np.load(work + "/pixels.npy")
    out["predict_pixels"] = run("predict_pixels", pixels=tf.constant(pixels, tf.float32))
    out["predict_pixels_other_size"] = run("predict_pixels",
                                           pixels=tf.zeros([2, 17, 55, 3]) + 128.0)
    try:
        signatures["serving_default"](images=tf.constant([images[0], b"not an image"]))
        out["garbage"] = "no error"
    except tf.errors.InvalidArgumentError as error:
        out["garbage"] = error.message
    # A decompression bomb: a valid small PNG whose header claims 100,000 x 100,000 pixels.
    bomb = next(bytearray(i) for i in images if i[:4] == b"\\x89PNG")
    bomb[16:24] = (100000).to_bytes(4, "big") * 2
    try:
        signatures["serving_default"](images=tf.constant([bytes(bomb)]))
        out["bomb"] = "no error"
    except tf.errors.InvalidArgumentError as error:
        out["bomb"] = error.message
    out["after_garbage"] = run("serving_default", images=tf.constant(images[:1]))["scores"]

    out["replayed"] = []
    for line in open(work + "/requests.txt").read().split():
        request = predict_pb2.PredictRequest.FromString(open(line, "rb").read())
        feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        result = signatures[request.model_spec.signature_name](**feed)
        out["replayed"].append([line, request.model_spec.signature_name,
                                {k: list(v.shape) for k, v in result.items()}])

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        signature = meta.signature_def["serving_default"]
        fetches = {k: v.name for k, v in signature.outputs.items()}
        result = session.run(fetches, {signature.inputs["images"].name: images})
        out["tf1_scores"] = result["scores"].tolist()
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One export with fake but real-shaped CF tables, served once in a fresh process."""
    work = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(1)
    model = model_lib.build_model("efficientnet_b0", "none", SIZE, len(LABELS), False, CF_DIM)
    item_vectors = rng.normal(0.3, 2.0, size=(40, CF_DIM)).astype(np.float32)
    user_vectors = rng.normal(0.0, 1.0, size=(25, CF_DIM)).astype(np.float32)
    item_ids = np.array([f"item-{i}" for i in range(40)])
    user_ids = np.array([f"user-{i}" for i in range(25)])
    _, cf_scaling = cf_targets.fit(item_vectors, np.ones(40, bool), np.arange(40),
                                   "standardised", 0.5)
    path = export.export_saved_model(
        model, LABELS, SIZE, str(work / "saved"), "demo", cf_scaling=cf_scaling,
        item_ids=item_ids, item_vectors=item_vectors, user_ids=user_ids,
        user_vectors=user_vectors, top_k=TOP_K)

    images = _images()
    for name, encoded in images.items():
        (work / name).write_bytes(encoded)
    pixels = np.stack([data.decode_and_resize(b, SIZE).numpy() for b in images.values()])
    np.save(work / "pixels.npy", pixels)  # uint8, as a client would hold them
    (work / "inputs.json").write_text(json.dumps({"names": list(images)}))
    outputs = model(pixels.astype(np.float32), training=False)
    embedding = (np.asarray(outputs["cf"], np.float64) * cf_scaling["scale"]
                 + np.asarray(cf_scaling["mean"]))

    # Requests to replay: the warm-up records and the client's gRPC requests.
    client = _load_client()
    request_files = []
    warmup = os.path.join(path, "assets.extra", export.WARMUP_FILE)
    for i, record in enumerate(tf.data.TFRecordDataset(warmup).as_numpy_iterator()):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request_files.append(work / f"warmup{i}.pb")
        request_files[-1].write_bytes(log.predict_log.request.SerializeToString())
    for signature in _plain_signatures(client):
        request = client.predict_request("demo", signature, [images["rgb.jpg"]] * 2)
        request_files.append(work / f"client_{signature}.pb")
        request_files[-1].write_bytes(request.SerializeToString())
    (work / "requests.txt").write_text("\n".join(str(f) for f in request_files))

    result = subprocess.run([sys.executable, "-c", SERVER_SCRIPT, path, str(work)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": ""}, cwd=str(work))
    assert result.returncode == 0, result.stderr[-3000:]
    return {"path": path, "work": work, "images": images, "client": client,
            "served": json.loads(result.stdout.strip().splitlines()[-1]),
            "scores": np.asarray(outputs["labels"]), "embedding": embedding,
            "items": (item_ids, item_vectors), "users": (user_ids, user_vectors)}


def _numpy_top_k(embedding, ids, vectors, k):
    scores = embedding @ vectors.T.astype(np.float64)
    order = np.argsort(-scores, axis=1)[:, :k]
    return ids[order].tolist(), np.take_along_axis(scores, order, axis=1)


@pytest.mark.slow
def test_every_signature_is_exported_and_listed_by_saved_model_cli(served):
    expected = ["audience", "embed", "predict_pixels", "serving_default", "similar_items"]
    assert served["served"]["signatures"] == expected
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--dir", served["path"], "--all"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in expected:
        assert f"signature_def['{name}']" in result.stdout
    for output in ["top_k_labels", "embedding", "item_ids", "user_ids"]:
        assert f"outputs['{output}']" in result.stdout


@pytest.mark.slow
def test_labels_match_keras_for_every_image_kind(served):
    out = served["served"]["serving_default"]
    n = len(served["images"])
    np.testing.assert_allclose(out["scores"], served["scores"], atol=1e-4)
    assert out["label_names"] == [LABELS] * n
    order = np.argsort(-served["scores"], axis=1)
    assert np.asarray(out["top_k_labels"]).shape == (n, 3)  # k = min(5, C)
    assert out["top_k_labels"] == [[LABELS[j] for j in row] for row in order]
    np.testing.assert_allclose(out["top_k_scores"], np.sort(served["scores"])[:, ::-1],
                               atol=1e-4)
    np.testing.assert_allclose(served["served"]["tf1_scores"], served["scores"], atol=1e-4)


@pytest.mark.slow
def test_predict_pixels_matches_keras_and_accepts_any_size(served):
    out = served["served"]
    np.testing.assert_allclose(out["predict_pixels"]["scores"], served["scores"], atol=1e-4)
    other = np.asarray(out["predict_pixels_other_size"]["scores"])
    assert other.shape == (2, len(LABELS)) and np.allclose(other.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_embed_is_the_unscaled_cf_output(served):
    embedding = np.asarray(served["served"]["embed"]["embedding"])
    assert embedding.shape == (len(served["images"]), CF_DIM)
    np.testing.assert_allclose(embedding, served["embedding"], atol=1e-4, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("signature, key, table", [("similar_items", "item_ids", "items"),
                                                   ("audience", "user_ids", "users")])
def test_top_k_is_a_dot_product_top_k_over_the_tables(served, signature, key, table):
    out = served["served"][signature]
    ids, scores = _numpy_top_k(served["embedding"], *served[table], TOP_K)
    assert out[key] == ids
    np.testing.assert_allclose(out["scores"], scores, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_garbage_bytes_fail_clearly_and_the_model_keeps_serving(served):
    assert "Unknown image file format" in served["served"]["garbage"]
    assert "image too large: its header claims more than 178,956,970" in served["served"]["bomb"]
    np.testing.assert_allclose(served["served"]["after_garbage"], served["scores"][:1],
                               atol=1e-4)


@pytest.mark.slow
def test_warmup_requests_cover_every_signature_and_run(served):
    replayed = served["served"]["replayed"]
    warmup = [r for r in replayed if os.path.basename(r[0]).startswith("warmup")]
    assert sorted(r[1] for r in warmup) == served["served"]["signatures"]
    assert all(shape[0] == 1 for _, _, outputs in warmup for shape in outputs.values())


def _signature_inputs(path):
    saved = saved_model_pb2.SavedModel.FromString(open(os.path.join(path, "saved_model.pb"),
                                                       "rb").read())
    signatures = saved.meta_graphs[0].signature_def
    return {name: {k: v.dtype for k, v in sig.inputs.items()} for name, sig in signatures.items()}


@pytest.mark.slow
def test_client_requests_match_the_signatures(served):
    client, images = served["client"], served["images"]
    inputs = _signature_inputs(served["path"])
    assert "classify_items" not in inputs  # hybrid models only (test_classify_items.py)
    for signature in _plain_signatures(client):
        request = predict_pb2.PredictRequest.FromString(
            (served["work"] / f"client_{signature}.pb").read_bytes())
        assert request.model_spec.signature_name == signature
        assert {k: v.dtype for k, v in request.inputs.items()} == inputs[signature]
        body = client.rest_request_body(signature, [images["rgb.jpg"]])
        assert body["signature_name"] == signature and len(body["instances"]) == 1
        if inputs[signature] == {"images": tf.string.as_datatype_enum}:
            assert base64.b64decode(body["instances"][0]["b64"]) == images["rgb.jpg"]
        else:
            assert np.asarray(body["instances"]).shape == (1, 50, 40, 3)
    client_runs = {r[1]: r[2] for r in served["served"]["replayed"] if "client_" in r[0]}
    assert client_runs["similar_items"] == {"item_ids": [2, TOP_K], "scores": [2, TOP_K]}
    assert client_runs["embed"] == {"embedding": [2, CF_DIM]}


@pytest.mark.slow
def test_rest_response_format_round_trips(served):
    client = served["client"]
    out = {k: np.asarray(v) for k, v in served["served"]["similar_items"].items()}
    response = json.loads(json.dumps(client.as_rest_response(out)))
    assert set(response["predictions"][0]) == {"item_ids", "scores"}
    back = client.rest_predictions_to_outputs("similar_items", response["predictions"])
    np.testing.assert_allclose(back["scores"], out["scores"])


def test_models_config_parses_as_a_model_server_config():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    with open(os.path.join(ROOT, "scripts", "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path) == ("cfimage_demo", "/models/cfimage_demo")
