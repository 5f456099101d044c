"""POST /classify: one or more images in, one prediction per image out."""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query, Request

from service import metrics
from service.errors import ServiceError
from service.postprocess import to_prediction
from service.preprocessing import PreprocessSpec, image_to_input
from service.schemas import ClassifyResponse, ErrorResponse, Prediction
from service.state import ServiceState, StateDep
from service.uploads import Upload, read_uploads

router = APIRouter(tags=["classify"])

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "description": "One or more images as multipart `file` fields, or one image as a raw "
        "`image/*` body (JPEG, PNG, GIF: first frame, WebP, BMP, TIFF, ... any mode Pillow "
        "decodes). EXIF orientation is honoured.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Not an image, corrupt or truncated image, malformed request",
        413: "Body over the limit, too many pixels, too many files",
        415: "Unsupported Content-Type",
        422: "Missing `file` field or invalid query",
        503: "Queue full or model not ready (see Retry-After)",
        504: "No inference result within the request timeout",
    }.items()
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=_ERRORS,
    openapi_extra=_BODY_DOC,
    summary="Classify images; flag images of no known class as unknown",
)
async def classify(
    request: Request,
    state: StateDep,
    threshold: Annotated[
        float | None,
        Query(
            allow_inf_nan=False,
            description="Unknown threshold for this request only (default: the service's "
            "threshold, see /v1/model). An image is unknown when its score < threshold.",
        ),
    ] = None,
    top_k: Annotated[
        int, Query(ge=1, le=1000, description="Number of classes in each `top_k` list.")
    ] = 3,
) -> ClassifyResponse:
    predictor = state.require_predictor()
    uploads = await read_uploads(request, max_files=state.settings.max_files)
    with state.batcher.expecting(len(uploads)):
        inputs = await asyncio.gather(
            *(_prepare(state, predictor.preprocess_spec, u) for u in uploads)
        )
    rows = await state.batcher.submit(predictor, inputs, state.settings.request_timeout_s)
    value, source = state.threshold(threshold, predictor)
    score_name = state.score_name(predictor)
    predictions = [
        to_prediction(
            row,
            predictor.class_names,
            score_name=score_name,
            score_params=state.score_params(predictor),
            threshold=value,
            k=top_k,
            filename=upload.filename,
        )
        for row, upload in zip(rows, uploads, strict=True)
    ]
    _record(predictions)
    return ClassifyResponse(
        model_version=predictor.version,
        unknown_score=score_name,
        threshold=value,
        threshold_source=source,
        predictions=predictions,
    )


async def _prepare(state: ServiceState, spec: PreprocessSpec, upload: Upload) -> np.ndarray:
    """Decode + preprocess off the event loop; errors name the file."""
    try:
        return await state.in_thread(
            image_to_input, upload.data, spec, max_pixels=state.settings.max_image_pixels
        )
    except ServiceError as err:
        if upload.filename is not None:
            err.message = f"file {upload.filename!r}: {err.message}"
        raise


def _record(predictions: list[Prediction]) -> None:
    for p in predictions:
        metrics.IMAGES.labels(outcome="unknown" if p.unknown else "known").inc()
        metrics.PREDICTIONS.labels(label=p.label).inc()
        metrics.REACHABILITY.observe(p.reachability)
        metrics.CONFIDENCE.observe(p.confidence)
