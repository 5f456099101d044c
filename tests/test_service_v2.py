"""The Open Inference Protocol (KServe V2) routes, driven by the real Triton HTTP client
(``tritonclient.http``, nobody here wrote it) against a real uvicorn process, with real images:
MNIST digits (always) and ImageNet photos (../shared/data). Every answer must equal what
``POST /classify`` says about the same image."""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from _service_fixtures import (
    imagenet_photos,
    metric_value,
    mnist_digits,
    running_service,
    serving_model,
)
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.slow

MODEL = "oltr-digits"
MAX_FILES = 8
PER_IMAGE = ("label", "class_index", "confidence", "reachability", "distance", "score", "unknown")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("v2")
    path, _ = serving_model(root)
    env = {
        "OLTR_MODEL_PATH": str(path),
        "OLTR_MODEL_NAME": MODEL,
        "OLTR_MAX_FILES": str(MAX_FILES),
        "OLTR_WARMUP_RUNS": "1",
    }
    with (
        running_service(env, root / "service.log") as service,
        httpx.Client(base_url=service.url, timeout=30) as http,
    ):
        client = triton.InferenceServerClient(url=f"127.0.0.1:{service.port}", network_timeout=30)
        try:
            yield service, http, client
        finally:
            client.close()


def _classify(http: httpx.Client, images: list[bytes], **params: object) -> dict:
    files = [
        ("file", (f"{i}.img", data, "application/octet-stream")) for i, data in enumerate(images)
    ]
    r = http.post("/classify", files=files, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def _image_input(images: list[bytes], *, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(data) for data in images]
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def _infer(client, images: list[bytes], *, binary: bool, outputs=None, **kw):
    """Binary: binary input, outputs unnamed (the client asks binary_data_output); JSON: base64
    input, every per-image output named with binary_data=False (default: those of binary)."""
    if outputs is None and not binary:
        outputs = [triton.InferRequestedOutput(name, binary_data=False) for name in PER_IMAGE]
    return client.infer(MODEL, [_image_input(images, binary=binary)], outputs=outputs, **kw)


def _assert_same_as_classify(result, expected: dict) -> None:
    answers = {name: result.as_numpy(name) for name in PER_IMAGE}
    predictions = expected["predictions"]
    assert all(len(values) == len(predictions) for values in answers.values())
    for i, p in enumerate(predictions):
        got = {name: values[i] for name, values in answers.items()}
        got["label"] = got["label"].decode() if isinstance(got["label"], bytes) else got["label"]
        want = {name: p[name] for name in PER_IMAGE}
        assert {k: v.item() if hasattr(v, "item") else v for k, v in got.items()} == want, i


def test_health_and_metadata_through_the_triton_client(served):
    _, http, client = served
    info = http.get("/v1/model").json()
    assert info["name"] == MODEL
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, info["version"])
    assert not client.is_model_ready(MODEL, "0000not-this")
    assert not client.is_model_ready("resnet50")
    server = client.get_server_metadata()
    assert server["name"] == "oltr" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == [info["version"]]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in meta["outputs"]}
    assert outputs["label"] == ("BYTES", [-1]) and outputs["unknown"] == ("BOOL", [-1])
    assert outputs["probabilities"] == ("FP64", [-1, len(info["class_names"])])
    assert set(PER_IMAGE) <= outputs.keys()
    assert client.get_model_metadata(MODEL, info["version"]) == meta


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_digits_answer_as_classify_does(served, binary):
    service, http, client = served
    digits = mnist_digits(range(6), per_digit=1)
    images = [data for data, _ in digits]
    expected = _classify(http, images)
    before = httpx.get(service.url + "/metrics").text
    result = _infer(client, images, binary=binary)
    _assert_same_as_classify(result, expected)
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert response["model_version"] == expected["model_version"]
    assert response["parameters"]["threshold"] == expected["threshold"]
    encoded = {"binary_data_size" in (o.get("parameters") or {}) for o in response["outputs"]}
    assert encoded == {binary}
    labels = [p["label"] for p in expected["predictions"]]
    assert labels == [str(d) for _, d in digits]  # the default model knows its digits
    after = httpx.get(service.url + "/metrics").text
    counted = sum(
        metric_value(after, "oltr_images_classified_total", {"outcome": o})
        - metric_value(before, "oltr_images_classified_total", {"outcome": o})
        for o in ("known", "unknown")
    )
    assert counted == len(images)  # the same metrics as /classify
    assert (
        metric_value(after, "oltr_requests_total", {"endpoint": "/v2/models/{model_name}/infer"})
        >= 1
    )


@pytest.mark.data
def test_photos_answer_as_classify_does(served):
    _, http, client = served
    photos = [data for _, data in imagenet_photos(4)]
    if not photos:
        pytest.skip("../shared/data/imagenet-sample-open.tar.gz is absent")
    expected = _classify(http, photos)
    for binary in (False, True):
        _assert_same_as_classify(_infer(client, photos, binary=binary), expected)


def test_requested_outputs_probabilities_and_threshold(served):
    _, http, client = served
    images = [data for data, _ in mnist_digits(range(6), per_digit=1)]
    classes = len(http.get("/v1/model").json()["class_names"])
    expected = _classify(http, images, top_k=classes, threshold=1.2)
    outputs = [
        triton.InferRequestedOutput("probabilities", binary_data=True),
        triton.InferRequestedOutput("unknown", binary_data=False),
    ]
    result = _infer(client, images, binary=True, outputs=outputs, parameters={"threshold": 1.2})
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["probabilities", "unknown"]
    assert response["parameters"]["threshold_source"] == "request"
    probs = result.as_numpy("probabilities")
    assert probs.shape == (len(images), classes)
    assert result.as_numpy("unknown").tolist() == [p["unknown"] for p in expected["predictions"]]
    for row, p in zip(probs, expected["predictions"], strict=True):
        assert {e["class_index"]: e["probability"] for e in p["top_k"]} == dict(enumerate(row))
        assert row.sum() == pytest.approx(1.0, abs=1e-5)


def test_shape_n_by_one_and_request_id(served):
    _, http, client = served
    images = [data for data, _ in mnist_digits([1, 4], per_digit=1)]
    tensor = triton.InferInput("image", [2, 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(2, 1))
    result = client.infer(MODEL, [tensor], request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    _assert_same_as_classify(result, _classify(http, images))


def _raw_infer(http: httpx.Client, request: dict, model: str = MODEL) -> httpx.Response:
    return http.post(f"/v2/models/{model}/infer", content=json.dumps(request))


def _request(datatype="BYTES", shape=(1,), data=None, name="image") -> dict:
    digit = base64.b64encode(mnist_digits([0])[0][0]).decode()
    tensor = {"name": name, "datatype": datatype, "shape": list(shape), "data": data or [digit]}
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("request_body", "status", "needle"),
    [
        (_request(datatype="UINT8", data=[1, 2, 3]), 400, "expected BYTES"),
        (_request(shape=(2,)), 400, "shape [2] but 1 elements"),
        (_request(shape=(1, 3)), 400, "expected [N] or [N, 1]"),
        (_request(shape=(0,), data=[]), 400, "N >= 1"),
        (_request(name="input_1"), 400, "unknown input 'input_1'"),
        (_request(data=["not base64!"]), 400, "element 0 is not base64"),
        (_request(data=[base64.b64encode(b"GIF89a junk").decode()]), 400, "image"),
        ({"inputs": []}, 400, "exactly one input"),
        ({**_request(), "outputs": [{"name": "logits"}]}, 400, "unknown output 'logits'"),
        ({**_request(), "parameters": {"threshold": "high"}}, 400, "finite number"),
        (_request(shape=(MAX_FILES + 1,)), 413, f"at most {MAX_FILES} images"),
    ],
    ids=[
        "datatype",
        "shape-count",
        "shape-rank",
        "empty",
        "input-name",
        "base64",
        "not-an-image",
        "no-inputs",
        "output-name",
        "threshold",
        "too-many",
    ],
)
def test_bad_requests_get_protocol_errors(served, request_body, status, needle):
    _, http, _ = served
    r = _raw_infer(http, request_body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and needle in r.json()["error"], r.json()
    assert r.headers["x-request-id"]


def test_malformed_bodies_and_unknown_models(served):
    _, http, client = served
    assert _raw_infer(http, _request(), model="resnet50").status_code == 404
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("resnet50")
    assert err.value.status() == "404" and "unknown model 'resnet50'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        client.infer("resnet50", [_image_input([b"x"], binary=True)])
    assert err.value.status() == "404"
    bad_json = http.post(f"/v2/models/{MODEL}/infer", content=b"{not json")
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
    header = json.dumps(_request()).encode()
    wrong_length = http.post(
        f"/v2/models/{MODEL}/infer",
        content=header,
        headers={"Inference-Header-Content-Length": str(len(header) + 10)},
    )
    assert (
        wrong_length.status_code == 400
        and "Inference-Header-Content-Length" in (wrong_length.json()["error"])
    )
    head = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}
    head["inputs"][0]["parameters"] = {"binary_data_size": 9}
    text = json.dumps(head).encode()
    truncated = http.post(
        f"/v2/models/{MODEL}/infer",
        content=text + struct.pack("<I", 100) + b"short",
        headers={"Inference-Header-Content-Length": str(len(text))},
    )
    assert truncated.status_code == 400 and "runs past the data" in truncated.json()["error"]
    unknown_path = http.get("/v2/nothing/here")
    assert unknown_path.status_code == 404 and set(unknown_path.json()) == {"error"}
