"""Calls a cfimage model served by TensorFlow Serving, over REST or gRPC.

    python scripts/client.py --signature=serving_default poster.jpg other.png
    python scripts/client.py --protocol=grpc --signature=similar_items poster.jpg
    python scripts/client.py --saved_model=saved_models/cfimage_demo/1 --signature=audience x.jpg
    python scripts/client.py --signature=classify_items --item_ids=item-17,"" a.jpg new.jpg

Signatures: serving_default (labels), predict_pixels (labels from decoded pixels),
embed (two-tower vector), similar_items (catalogue items), audience (users),
classify_items (hybrid models: labels from each image and its item's CF vector, looked up by
--item_ids, one per image; an empty or unknown id classifies from the image alone).
--saved_model runs the signature in this process instead of asking a server and
prints the response as TF Serving's REST API would return it.

Needs tensorflow and tensorflow-serving-api (gRPC); never imports cfimage.
"""

import argparse
import base64
import json
import sys
import urllib.request

import numpy as np

SIGNATURES = ("serving_default", "predict_pixels", "embed", "similar_items", "audience",
              "classify_items")


def decode_pixels(image_bytes):
    """Encoded image -> (H, W, 3) float32 RGB 0-255, any size (the server resizes)."""
    import tensorflow as tf
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return image.numpy().astype(np.float32)


def signature_inputs(signature, images, item_ids=None):
    """{input name: value} of a signature for a list of encoded images (classify_items: and
    one item id per image, "" for an item without one)."""
    if signature == "predict_pixels":
        pixels = [decode_pixels(b) for b in images]
        if len({p.shape for p in pixels}) > 1:
            raise ValueError("predict_pixels takes one batch array: give images of one size")
        return {"pixels": np.stack(pixels)}
    if signature != "classify_items":
        return {"images": list(images)}
    item_ids = [""] * len(images) if item_ids is None else list(item_ids)
    if len(item_ids) != len(images):
        raise ValueError(f"classify_items takes one item id per image: {len(item_ids)} ids "
                         f"for {len(images)} images (use \"\" for an image without an id)")
    return {"images": list(images),
            "item_ids": [i.encode() if isinstance(i, str) else i for i in item_ids]}


def _b64(value):
    return {"b64": base64.b64encode(value).decode("ascii")}


def rest_request_body(signature, images, item_ids=None):
    """The JSON body of POST /v1/models/<name>:predict (row format, "instances"). Item ids
    go as base64 too: an id may be any bytes."""
    inputs = signature_inputs(signature, images, item_ids)
    if signature == "predict_pixels":
        instances = inputs["pixels"].tolist()
    elif signature == "classify_items":
        instances = [{"images": _b64(image), "item_ids": _b64(item)}
                     for image, item in zip(inputs["images"], inputs["item_ids"])]
    else:
        instances = [_b64(b) for b in inputs["images"]]
    return {"signature_name": signature, "instances": instances}


def predict_request(model_name, signature, images, version=None, item_ids=None):
    """A gRPC PredictRequest for the signature."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in signature_inputs(signature, images, item_ids).items():
        dtype = tf.float32 if name == "pixels" else tf.string
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
    return request


def call_rest(host, port, model_name, body, version=None, timeout=30.0):
    """POSTs the body; returns the outputs as {name: numpy array}, batch first."""
    path = f"/v1/models/{model_name}" + (f"/versions/{version}" if version else "") + ":predict"
    request = urllib.request.Request(f"http://{host}:{port}{path}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        predictions = json.load(response)["predictions"]
    return rest_predictions_to_outputs(body["signature_name"], predictions)


def rest_predictions_to_outputs(signature, predictions):
    """TF Serving's row-format "predictions" -> {output name: array}."""
    if not isinstance(predictions[0], dict):  # one output: TF Serving leaves out its name
        return {{"embed": "embedding"}[signature]: np.asarray(predictions)}
    return {key: np.asarray([row[key] for row in predictions]) for key in predictions[0]}


def call_grpc(host, port, request, timeout=30.0):
    """Sends the PredictRequest; returns the outputs as {name: numpy array}."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout)
    return {key: tf.make_ndarray(value) for key, value in response.outputs.items()}


def call_local(saved_model, signature, images, item_ids=None):
    """Runs the signature of a SavedModel in this process (no server)."""
    import tensorflow as tf
    inputs = signature_inputs(signature, images, item_ids)
    fn = tf.saved_model.load(saved_model).signatures[signature]
    return {key: tensor.numpy() for key, tensor in
            fn(**{name: tf.constant(value) for name, value in inputs.items()}).items()}


def as_rest_response(outputs):
    """Outputs formatted as TF Serving's REST API returns them for "instances" requests."""
    def plain(value):
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value]
        return value.item() if isinstance(value, np.generic) else value

    batch = len(next(iter(outputs.values())))
    if len(outputs) == 1:
        return {"predictions": [plain(row) for row in next(iter(outputs.values()))]}
    return {"predictions": [{key: plain(value[i]) for key, value in sorted(outputs.items())}
                            for i in range(batch)]}


def describe(signature, names, outputs):
    """Readable lines, one block per image."""
    def text(value):
        return value.decode() if isinstance(value, bytes) else str(value)

    lines = []
    for i, name in enumerate(names):
        lines.append(f"{name}:")
        if signature in ("serving_default", "classify_items"):
            rows = zip(outputs["top_k_labels"][i], outputs["top_k_scores"][i])
        elif signature == "predict_pixels":
            rows = sorted(zip(outputs["label_names"][i], outputs["scores"][i]), key=lambda r: -r[1])
        elif signature == "embed":
            vector = np.asarray(outputs["embedding"][i], dtype=float)
            lines.append(f"  embedding, dim {len(vector)}: "
                         + " ".join(f"{v:.4f}" for v in vector))
            continue
        else:
            key = "item_ids" if signature == "similar_items" else "user_ids"
            rows = zip(outputs[key][i], outputs["scores"][i])
        lines.extend(f"  {text(label):<24s} {float(score):.4f}" for label, score in rows)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, GIF, BMP)")
    parser.add_argument("--signature", default="serving_default", choices=SIGNATURES)
    parser.add_argument("--protocol", default="rest", choices=("rest", "grpc"))
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--rest_port", type=int, default=8501)
    parser.add_argument("--grpc_port", type=int, default=8500)
    parser.add_argument("--model_name", default="cfimage_demo")
    parser.add_argument("--version", type=int, default=None, help="default: the server's latest")
    parser.add_argument("--saved_model", default=None,
                        help="run this SavedModel version directory locally instead")
    parser.add_argument("--json", action="store_true", help="print the REST-format response")
    parser.add_argument("--item_ids", default=None, help="classify_items: comma-separated item "
                        "ids, one per image (empty for an image without an id)")
    args = parser.parse_args(argv)

    images = []
    for path in args.images:
        with open(path, "rb") as f:
            images.append(f.read())
    item_ids = None if args.item_ids is None else args.item_ids.split(",")
    if args.saved_model:
        outputs = call_local(args.saved_model, args.signature, images, item_ids)
    elif args.protocol == "rest":
        outputs = call_rest(args.host, args.rest_port, args.model_name,
                            rest_request_body(args.signature, images, item_ids), args.version)
    else:
        request = predict_request(args.model_name, args.signature, images, args.version,
                                  item_ids)
        outputs = call_grpc(args.host, args.grpc_port, request)
    if args.json:
        print(json.dumps(as_rest_response(outputs), indent=2))
    else:
        print("\n".join(describe(args.signature, args.images, outputs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
