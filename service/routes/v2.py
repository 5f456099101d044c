"""The Open Inference Protocol (KServe V2 / Triton HTTP) beside /classify: health, metadata,
infer. One model, named by OLTR_MODEL_NAME, whose only version is the card's version. Inference
goes through the same pipeline as /classify; this module only translates the wire format
(:mod:`service.inference_protocol`). Errors are ``{"error": "<message>"}`` (service.errors)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service import __version__
from service import inference_protocol as oip
from service.errors import OIP_PREFIX, ModelNotFound, ModelNotReady
from service.pipeline import classify_uploads
from service.predictor import Predictor
from service.state import ServiceState, StateDep
from service.uploads import Upload

router = APIRouter(prefix=OIP_PREFIX, tags=["open inference protocol (v2)"])
SERVER_NAME = "oltr"
EXTENSIONS = ["binary_tensor_data"]
MODEL = "/models/{model_name}"
VERSION = "/models/{model_name}/versions/{model_version}"


class OIPError(BaseModel):
    error: str = Field(description="What went wrong.")


class Liveness(BaseModel):
    live: bool


class ReadyState(BaseModel):
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size (the batch of images).")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] = Field(description="The served model card's version.")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ReadyState, "description": "Not ready (warming up, shutting down)"}
}
_MODEL_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": OIPError, "description": "No model of that name or version"},
    503: {"model": OIPError, "description": "No model loaded yet"},
}
_INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    **_MODEL_ERRORS,
    400: {"model": OIPError, "description": "Bad tensor name, shape, datatype, data or image"},
    413: {"model": OIPError, "description": "Body, pixels or images over the limits"},
    503: {"model": OIPError, "description": "Queue full or model not ready (see Retry-After)"},
    504: {"model": OIPError, "description": "No inference result within the request timeout"},
}
_INFER_DOC = {
    "requestBody": {
        "required": True,
        "description": "An Open Inference Protocol request: one BYTES input named `image` of "
        "shape [N] (or [N, 1]), each element one encoded image: base64 strings in JSON, or raw "
        "bytes with the binary-data extension (`Inference-Header-Content-Length`). Optional "
        "`parameters.threshold` (this request's unknown threshold), `outputs` (names, with "
        "`parameters.binary_data`; `probabilities` only when named).",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


def _check_model(state: ServiceState, name: str, version: str | None) -> Predictor | None:
    """404 for another name, or another version than the loaded one; the loaded predictor."""
    if name != state.settings.model_name:
        raise ModelNotFound(
            f"unknown model {name!r}; this server serves {state.settings.model_name!r}"
        )
    predictor = state.predictor
    if predictor is not None and version is not None and version != predictor.version:
        raise ModelNotFound(
            f"model {name!r} has no version {version!r}; serving version {predictor.version!r}"
        )
    return predictor


def _ready(ready: bool) -> JSONResponse:
    headers = None if ready else {"Retry-After": "1"}
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503, headers=headers)


@router.get("/health/live", response_model=Liveness, summary="Liveness: the process answers")
async def live() -> Liveness:
    return Liveness(live=True)


@router.get(
    "/health/ready",
    response_model=ReadyState,
    responses=_NOT_READY,
    summary="Readiness: 200 once the model is loaded and warmed up (as /readyz)",
)
async def server_ready(state: StateDep) -> JSONResponse:
    return _ready(state.ready)


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)


@router.get(MODEL + "/ready", response_model=ReadyState, responses={**_MODEL_ERRORS, **_NOT_READY})
@router.get(
    VERSION + "/ready", response_model=ReadyState, responses={**_MODEL_ERRORS, **_NOT_READY}
)
async def model_ready(
    state: StateDep, model_name: str, model_version: str | None = None
) -> JSONResponse:
    """Model readiness: 200 once warmed up, 503 before (404: no such model or version)."""
    _check_model(state, model_name, model_version)
    return _ready(state.ready)


@router.get(MODEL, response_model=ModelMetadata, responses=_MODEL_ERRORS)
@router.get(VERSION, response_model=ModelMetadata, responses=_MODEL_ERRORS)
async def model_metadata(
    state: StateDep, model_name: str, model_version: str | None = None
) -> ModelMetadata:
    """The model's input and output tensors (classes and threshold: /v1/model)."""
    predictor = _check_model(state, model_name, model_version)
    if predictor is None:
        raise ModelNotReady(f"model {model_name!r} is not loaded yet (status: {state.status})")
    outputs = [TensorMetadata(name=n, datatype=d, shape=[-1]) for n, (d, _) in oip.OUTPUTS.items()]
    outputs.append(
        TensorMetadata(
            name=oip.PROBABILITIES,
            datatype=oip.PROBABILITIES_DATATYPE,
            shape=[-1, len(predictor.class_names)],
        )
    )
    return ModelMetadata(
        name=model_name,
        versions=[predictor.version],
        platform="onnxruntime_onnx",
        inputs=[TensorMetadata(name=oip.INPUT_NAME, datatype=oip.INPUT_DATATYPE, shape=[-1])],
        outputs=outputs,
    )


@router.post(MODEL + "/infer", responses=_INFER_ERRORS, openapi_extra=_INFER_DOC)
@router.post(VERSION + "/infer", responses=_INFER_ERRORS, openapi_extra=_INFER_DOC)
async def infer(
    request: Request, state: StateDep, model_name: str, model_version: str | None = None
) -> Response:
    """Classify the images of an infer request: the /classify pipeline, V2 tensors out."""
    _check_model(state, model_name, model_version)
    state.require_predictor()  # 503 before reading a body the service cannot serve
    parsed = oip.parse_infer_request(
        await request.body(),
        request.headers.get(oip.BINARY_HEADER),
        max_images=state.settings.max_files,
    )
    result = await classify_uploads(
        state,
        [Upload(None, image) for image in parsed.images],
        threshold=parsed.threshold,
        top_k=oip.ALL_CLASSES if parsed.wants_probabilities else 1,
    )
    header = {
        "model_name": model_name,
        "model_version": result.model_version,
        **({"id": parsed.id} if parsed.id is not None else {}),
        "parameters": {
            "unknown_score": result.unknown_score,
            "threshold": result.threshold,
            "threshold_source": result.threshold_source,
        },
    }
    tensors = oip.prediction_tensors(result, with_probabilities=parsed.wants_probabilities)
    body, json_length = oip.encode_infer_response(header, tensors, parsed.outputs)
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={oip.BINARY_HEADER: str(json_length)},
    )
