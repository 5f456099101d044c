"""The Open Inference Protocol (KServe V2, Triton's HTTP API) wire format of the classifier.

Pure translation, no I/O: an infer request body -> the images and options it carries; a
:class:`ClassifyResponse` -> named output tensors -> a response body. The images travel as one
``BYTES`` input tensor named ``image`` of shape ``[N]`` (or ``[N, 1]``): in JSON each element is
the base64 of an encoded image (JSON strings cannot carry raw bytes); with the binary-data
extension (header ``Inference-Header-Content-Length``) each element is the raw file, 4-byte
little-endian length first. Outputs are returned in binary when the request asks for it
(``parameters.binary_data`` per output, or ``binary_data_output`` for the whole request).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import BadRequest, TooManyFiles
from service.schemas import ClassifyResponse

BINARY_HEADER = "Inference-Header-Content-Length"
INPUT_NAME = "image"
INPUT_DATATYPE = "BYTES"
PROBABILITIES = "probabilities"
# name -> (datatype, meaning): the per-image outputs, returned unless the request names others.
OUTPUTS = {
    "label": ("BYTES", "most likely known class (the nearest one when unknown is true)"),
    "class_index": ("INT64", "index of label in the model's class list"),
    "confidence": ("FP64", "softmax probability of label"),
    "reachability": ("FP64", "OLTR reachability s_r / d_min (higher = more known)"),
    "distance": ("FP64", "L2 distance to the nearest class centroid"),
    "score": ("FP64", "the configured unknown score (higher = more known)"),
    "unknown": ("BOOL", "score < threshold: likely of no known class"),
}
PROBABILITIES_DATATYPE = "FP64"  # [N, K], only when requested by name
ALL_CLASSES = 2**31  # top_k that lists every class (top_k is clamped to the class count)
_NUMPY = {"INT64": "<i8", "FP64": "<f8", "BOOL": "?"}


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """What an infer request asks for: the images, in order, and how to answer."""

    id: str | None
    images: list[bytes]
    threshold: float | None
    outputs: list[RequestedOutput]

    @property
    def wants_probabilities(self) -> bool:
        return any(o.name == PROBABILITIES for o in self.outputs)


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    """Flat, row-major: str for BYTES, int, float or bool otherwise."""


# -- request ------------------------------------------------------------------------------------


def parse_infer_request(body: bytes, header_length: str | None, *, max_images: int) -> InferRequest:
    """Parse a JSON or binary-extension infer request; BadRequest (400) names what is wrong."""
    header, binary = _split_body(body, header_length)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise BadRequest(f"expected exactly one input tensor named {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise BadRequest(
            f"unknown input {tensor.get('name')!r}; the model's input is {INPUT_NAME!r}"
        )
    if tensor.get("datatype") != INPUT_DATATYPE:
        raise BadRequest(
            f"input {INPUT_NAME!r} has datatype {tensor.get('datatype')!r}; expected "
            f"{INPUT_DATATYPE} (one encoded image per element)"
        )
    count = _image_count(tensor.get("shape"))
    if count > max_images:
        raise TooManyFiles(f"at most {max_images} images per request (shape says {count})")
    images = _binary_images(tensor, binary) if binary is not None else _json_images(tensor)
    if len(images) != count:
        raise BadRequest(
            f"input {INPUT_NAME!r} has shape {tensor['shape']} but {len(images)} elements"
        )
    params = _dict(header.get("parameters"), "parameters")
    return InferRequest(
        id=_request_id(header.get("id")),
        images=images,
        threshold=_threshold(params.get("threshold")),
        outputs=_requested_outputs(header.get("outputs"), bool(params.get("binary_data_output"))),
    )


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes | None]:
    """(JSON header, binary tail or None without the binary-data extension)."""
    if header_length is None:
        return _json_object(body), None
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 < n <= len(body):
        raise BadRequest(f"{BINARY_HEADER} is {header_length!r}; the body has {len(body)} bytes")
    return _json_object(body[:n]), body[n:]


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"the inference request header is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise BadRequest("the inference request must be a JSON object")
    return value


def _dict(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _image_count(shape: Any) -> int:
    ok = isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)
    if not ok or len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
        raise BadRequest(
            f"input {INPUT_NAME!r} has shape {shape!r}; expected [N] or [N, 1] with N >= 1 images"
        )
    return int(shape[0])


def _json_images(tensor: dict[str, Any]) -> list[bytes]:
    data = tensor.get("data")
    if isinstance(data, list) and data and isinstance(data[0], list):  # nested [N, 1] form
        data = [x for row in data for x in (row if isinstance(row, list) else [row])]
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise BadRequest(
            f"input {INPUT_NAME!r}: 'data' must be a list of base64 strings (one encoded image "
            f"each), or send the images as binary data with {BINARY_HEADER}"
        )
    images: list[bytes] = []
    for i, text in enumerate(data):
        try:
            images.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as err:
            raise BadRequest(f"input {INPUT_NAME!r} element {i} is not base64: {err}") from err
    return images


def _binary_images(tensor: dict[str, Any], binary: bytes) -> list[bytes]:
    """Elements of a binary BYTES tensor: each a 4-byte little-endian length, then the bytes."""
    size = _dict(tensor.get("parameters"), "input parameters").get("binary_data_size")
    if type(size) is not int or size != len(binary):
        raise BadRequest(
            f"input {INPUT_NAME!r}: parameters.binary_data_size is {size!r} but {len(binary)} "
            f"bytes follow the {BINARY_HEADER} header"
        )
    images: list[bytes] = []
    at = 0
    while at < len(binary):
        if at + 4 > len(binary):
            raise BadRequest(f"input {INPUT_NAME!r}: truncated element length at byte {at}")
        (n,) = struct.unpack_from("<I", binary, at)
        if at + 4 + n > len(binary):
            raise BadRequest(f"input {INPUT_NAME!r}: element {len(images)} runs past the data")
        images.append(binary[at + 4 : at + 4 + n])
        at += 4 + n
    return images


def _request_id(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("'id' must be a string")
    return value


def _threshold(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequest(f"parameters.threshold must be a finite number, got {value!r}")
    return float(value)


def _requested_outputs(outputs: object, binary_default: bool) -> list[RequestedOutput]:
    if outputs is None:
        return [RequestedOutput(name, binary_default) for name in OUTPUTS]
    if not isinstance(outputs, list) or not outputs:
        raise BadRequest("'outputs' must be a non-empty list of {\"name\": ...} objects")
    requested = []
    for out in outputs:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in OUTPUTS and name != PROBABILITIES:
            known = ", ".join([*OUTPUTS, PROBABILITIES])
            raise BadRequest(f"unknown output {name!r}; the model's outputs are {known}")
        params = _dict(out.get("parameters"), f"parameters of output {name!r}")
        requested.append(RequestedOutput(name, bool(params.get("binary_data", binary_default))))
    return requested


# -- response -----------------------------------------------------------------------------------


def prediction_tensors(result: ClassifyResponse, *, with_probabilities: bool) -> dict[str, Tensor]:
    """The output tensors of ``result``; probabilities need it classified with ALL_CLASSES."""
    preds = result.predictions
    n = len(preds)
    tensors = {
        name: Tensor(name, datatype, [n], [getattr(p, name) for p in preds])
        for name, (datatype, _) in OUTPUTS.items()
    }
    if not with_probabilities:
        return tensors
    class_count = len(preds[0].top_k)
    probs = np.zeros((n, class_count))
    for i, p in enumerate(preds):
        for entry in p.top_k:
            probs[i, entry.class_index] = entry.probability
    tensors[PROBABILITIES] = Tensor(
        PROBABILITIES, PROBABILITIES_DATATYPE, [n, class_count], probs.ravel().tolist()
    )
    return tensors


def encode_infer_response(
    header: dict[str, Any], tensors: dict[str, Tensor], requested: list[RequestedOutput]
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when no output is binary), outputs in request order."""
    outputs, blobs = [], []
    for out in requested:
        t = tensors[out.name]
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if out.binary:
            blob = _to_binary(t)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = t.data
        outputs.append(entry)
    head = json.dumps({**header, "outputs": outputs}).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _to_binary(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(b)) + b for b in (s.encode() for s in t.data))
    return np.asarray(t.data, dtype=_NUMPY[t.datatype]).tobytes()
