"""POST /classify: one or more images in, one prediction per image out."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from service.pipeline import classify_uploads
from service.schemas import ClassifyResponse, ErrorResponse
from service.state import StateDep
from service.uploads import read_uploads

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
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Not an image, corrupt or truncated image, malformed request",
        413: "Body over the limit, too many pixels (per image or request), too many files",
        415: "Unsupported Content-Type",
        422: "Missing `file` field or invalid query",
        503: "Queue full, decoding capacity taken, model not ready, shutting down "
        "(see Retry-After)",
        504: "No answer within the request timeout (decoding and inference)",
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
    state.require_predictor()  # 503 before reading a body the service cannot serve
    uploads = await read_uploads(request, max_files=state.settings.max_files)
    return await classify_uploads(state, uploads, threshold=threshold, top_k=top_k)
