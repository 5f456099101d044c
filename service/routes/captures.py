"""Admin API over the capture folder (``OLTR_CAPTURE_DIR``; bearer auth like /admin/reload):
list the captured unknown images, fetch one, and group them into candidate new classes with
the serving model (:mod:`service.discovery`, the code of ``python -m service.discover``)."""

from __future__ import annotations

import asyncio
import mimetypes
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse

from service.capture import CaptureStore
from service.discovery import discover
from service.errors import CaptureDisabled
from service.routes.admin import AUTH_ERRORS, require_admin
from service.schemas import CaptureGroups, CaptureList, ErrorResponse
from service.state import ServiceState, StateDep

_DISABLED: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "Capture is off (capture_disabled)"}
}
GROUPS_MAX_IMAGES = 5000
"""The groups route clusters the newest this many captures: average linkage keeps all pairwise
distances in memory (5,000 images: about 100 MB); the CLI has no such limit."""
router = APIRouter(
    prefix="/admin/captures",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses={**AUTH_ERRORS, **_DISABLED},
)


def _store(state: ServiceState) -> CaptureStore:
    if state.captures is None:
        raise CaptureDisabled("capture is off: set OLTR_CAPTURE_DIR to keep unknown images")
    return state.captures


@router.get("", response_model=CaptureList, summary="Captured unknown images, newest first")
async def list_captures(
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    total, items = await asyncio.to_thread(_store(state).list, limit, offset)
    return {"total": total, "items": items}


@router.get(
    "/groups",
    response_model=CaptureGroups,
    summary="Group the newest 5,000 captures into candidate new classes (embedding + clustering)",
)
async def capture_groups(state: StateDep) -> dict[str, Any]:
    store = _store(state)
    predictor = state.require_predictor()
    found = await asyncio.to_thread(discover, store.folder, predictor, max_images=GROUPS_MAX_IMAGES)
    return found.summary()


@router.get(
    "/{capture_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/*": {}}, "description": "The image bytes as sent"}},
    summary="One captured image (id: 64 lower-case hex digits)",
)
async def capture_image(capture_id: str, state: StateDep) -> FileResponse:
    path = _store(state).path_of(capture_id)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})
