"""The Open Inference Protocol codec (service/inference_protocol.py) on hand-built bytes."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from service import inference_protocol as oip
from service.errors import BadRequest, TooManyFiles
from service.schemas import ClassifyResponse, Prediction, TopKEntry


def _binary_request(elements: list[bytes], **extra: object) -> tuple[bytes, str]:
    blob = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    tensor = {
        "name": "image",
        "datatype": "BYTES",
        "shape": [len(elements)],
        "parameters": {"binary_data_size": len(blob)},
    }
    header = json.dumps({"inputs": [tensor], **extra}).encode()
    return header + blob, str(len(header))


def test_binary_bytes_tensor_is_split_at_its_length_prefixes() -> None:
    body, length = _binary_request([b"abc", b"", b"\x00\xff"], id="r1")
    # 4 + 3 + 4 + 0 + 4 + 2 = 17 bytes after the header
    assert len(body) - int(length) == 17
    parsed = oip.parse_infer_request(body, length, max_images=4)
    assert parsed.images == [b"abc", b"", b"\x00\xff"]
    assert parsed.id == "r1" and parsed.threshold is None
    assert [o.name for o in parsed.outputs] == list(oip.OUTPUTS)
    assert not any(o.binary for o in parsed.outputs) and not parsed.wants_probabilities


def test_json_base64_elements_and_the_n_by_one_shape() -> None:
    data = [[base64.b64encode(b"img-1").decode()], [base64.b64encode(b"img-2").decode()]]
    request = {
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1], "data": data}],
        "parameters": {"threshold": 2, "binary_data_output": True},
        "outputs": [
            {"name": "probabilities"},
            {"name": "label", "parameters": {"binary_data": False}},
        ],
    }
    parsed = oip.parse_infer_request(json.dumps(request).encode(), None, max_images=2)
    assert parsed.images == [b"img-1", b"img-2"] and parsed.threshold == 2.0
    assert parsed.outputs == [
        oip.RequestedOutput("probabilities", True),  # binary_data_output is the default
        oip.RequestedOutput("label", False),
    ]
    assert parsed.wants_probabilities


@pytest.mark.parametrize(
    ("mutate", "error", "needle"),
    [
        (lambda b, n: (b, "x"), BadRequest, "Inference-Header-Content-Length is 'x'"),
        (lambda b, n: (b[:-1], n), BadRequest, "binary_data_size is 11 but 10 bytes"),
        (lambda b, n: (b, str(len(b) + 1)), BadRequest, "the body has"),
    ],
    ids=["length-not-a-number", "short-blob", "length-past-body"],
)
def test_broken_binary_framing_is_a_400(mutate, error, needle) -> None:
    body, length = _binary_request([b"abc", b""])  # 4 + 3 + 4 = 11 bytes
    with pytest.raises(error, match=needle):
        oip.parse_infer_request(*mutate(body, length), max_images=4)


def test_more_images_than_allowed_is_too_many_files() -> None:
    body, length = _binary_request([b"a", b"b", b"c"])
    with pytest.raises(TooManyFiles, match="at most 2 images"):
        oip.parse_infer_request(body, length, max_images=2)


def _result() -> ClassifyResponse:
    def prediction(label: str, index: int, p: float, unknown: bool) -> Prediction:
        rest = [TopKEntry(label="x", class_index=1 - index, probability=1 - p)]
        return Prediction(
            filename=None,
            label=label,
            class_index=index,
            confidence=p,
            reachability=2.5,
            distance=4.0,
            score=p,
            unknown=unknown,
            top_k=[TopKEntry(label=label, class_index=index, probability=p), *rest],
        )

    return ClassifyResponse(
        model_version="v1",
        unknown_score="max_softmax",
        threshold=0.5,
        threshold_source="card",
        predictions=[prediction("a", 0, 0.75, False), prediction("bc", 1, 0.25, True)],
    )


def test_binary_outputs_by_hand() -> None:
    tensors = oip.prediction_tensors(_result(), with_probabilities=True)
    requested = [
        oip.RequestedOutput("label", True),
        oip.RequestedOutput("unknown", True),
        oip.RequestedOutput("class_index", True),
        oip.RequestedOutput("confidence", False),
        oip.RequestedOutput("probabilities", True),
    ]
    body, length = oip.encode_infer_response({"model_name": "m"}, tensors, requested)
    header = json.loads(body[:length])
    assert header["model_name"] == "m"
    blobs = body[length:]
    label = b"\x01\x00\x00\x00a" + b"\x02\x00\x00\x00bc"
    unknown = b"\x00\x01"
    class_index = struct.pack("<qq", 0, 1)
    probabilities = struct.pack("<4d", 0.75, 0.25, 0.75, 0.25)  # [[p0, p1], [p0, p1]]
    assert blobs == label + unknown + class_index + probabilities
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in header["outputs"]]
    assert sizes == [(4 + 1) + (4 + 2), 2, 2 * 8, None, 4 * 8]
    confidence = header["outputs"][3]
    assert confidence == {
        "name": "confidence",
        "datatype": "FP64",
        "shape": [2],
        "data": [0.75, 0.25],
    }
    assert header["outputs"][4]["shape"] == [2, 2]


def test_all_json_outputs_have_no_binary_header() -> None:
    tensors = oip.prediction_tensors(_result(), with_probabilities=False)
    assert oip.PROBABILITIES not in tensors
    requested = [oip.RequestedOutput(name, False) for name in oip.OUTPUTS]
    body, length = oip.encode_infer_response({}, tensors, requested)
    assert length is None
    outputs = {o["name"]: o["data"] for o in json.loads(body)["outputs"]}
    assert outputs["label"] == ["a", "bc"] and outputs["unknown"] == [False, True]
    assert outputs["class_index"] == [0, 1] and outputs["distance"] == [4.0, 4.0]
