"""Enrolment over HTTP (admin token; needs OLTR_ENROL_DIR): list, add and remove classes.

``POST /admin/classes`` learns a class from a few images without training
(:mod:`service.enrolment`), writes the new version into the enrolment folder and swaps it in
as a reload does. Enrolments run one at a time; the images are checked (decoded) before
anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request

from service import metrics
from service.admission import Deadline
from service.enrolment import Artifact, Example, enrol, remove, write_version
from service.errors import BadRequest, CaptureDisabled, EnrolmentUnavailable, MissingFile
from service.routes.admin import AUTH_ERRORS, require_admin
from service.schemas import ClassesResponse, ClassInfo, EnrolResponse, ErrorResponse
from service.state import ServiceState, StateDep
from service.uploads import Upload, read_form

NAME_FIELD, FILE_FIELD, CAPTURE_FIELD = "name", "file", "capture"
_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    409: {"model": ErrorResponse, "description": "Name taken, trained class, or enrolment off"},
}
router = APIRouter(
    prefix="/admin/classes",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=_ERRORS,
)


def _enrol_dir(state: ServiceState) -> Path:
    if state.settings.enrol_dir is None:
        raise EnrolmentUnavailable("enrolment is off: set OLTR_ENROL_DIR")
    return state.settings.enrol_dir


@router.get("", response_model=ClassesResponse, summary="The serving model's classes")
async def list_classes(state: StateDep) -> ClassesResponse:
    predictor = state.require_loaded()
    enrolled = predictor.enrolled
    return ClassesResponse(
        model_version=predictor.version,
        classes=[
            ClassInfo(
                name=n,
                index=i,
                enrolled=i >= enrolled.base_classes,
                examples=enrolled.examples.get(n),
            )
            for i, n in enumerate(predictor.class_names)
        ],
    )


@router.post(
    "",
    response_model=EnrolResponse,
    status_code=201,
    summary="Add a class learnt from 1..OLTR_ENROL_MAX_IMAGES images (multipart `name` + `file`)",
)
async def add_class(request: Request, state: StateDep) -> EnrolResponse:
    folder = _enrol_dir(state)
    limit = state.settings.enrol_max_images
    form = await read_form(request, max_files=limit, max_fields=limit + 1)
    name = _one_name(form.fields.get(NAME_FIELD, []))
    captured = await state.in_thread(_captured, state, form.fields.get(CAPTURE_FIELD, []))
    uploads = form.files.get(FILE_FIELD, []) + captured
    if not uploads:
        raise MissingFile(
            f"enrolment needs 1 to {limit} images ({FILE_FIELD!r} or {CAPTURE_FIELD!r})"
        )
    if len(uploads) > limit:
        raise BadRequest(f"at most {limit} images per enrolment (OLTR_ENROL_MAX_IMAGES)")
    async with state.enrol_lock:
        predictor = state.require_predictor()
        examples = await _examples(state, uploads)
        artifact = await state.in_thread(Artifact.read, predictor.path)
        new = await state.in_thread(enrol, artifact, name, examples)
        path = await state.in_thread(write_version, new, folder)
        await state.reload(path)
    metrics.ENROLMENTS.labels(action="add").inc()
    return EnrolResponse(
        name=name,
        version=new.version,
        previous_version=artifact.version,
        path=str(path),
        examples=len(examples),
    )


@router.delete("/{name}", response_model=EnrolResponse, summary="Remove an enrolled class")
async def remove_class(name: str, state: StateDep) -> EnrolResponse:
    folder = _enrol_dir(state)
    async with state.enrol_lock:
        predictor = state.require_predictor()
        artifact = await state.in_thread(Artifact.read, predictor.path)
        new = await state.in_thread(remove, artifact, name)
        path = await state.in_thread(write_version, new, folder)
        await state.reload(path)
    metrics.ENROLMENTS.labels(action="remove").inc()
    return EnrolResponse(
        name=name, version=new.version, previous_version=artifact.version, path=str(path)
    )


def _one_name(values: list[str]) -> str:
    if len(values) != 1 or not values[0].strip():
        raise BadRequest(f"give the class exactly one {NAME_FIELD!r} field")
    return values[0].strip()


def _captured(state: ServiceState, ids: list[str]) -> list[Upload]:
    """Uploads for capture ids: the captured bytes (404 for an id that is not a capture).
    Reads files: run it off the event loop."""
    if not ids:
        return []
    if state.captures is None:
        raise CaptureDisabled("enrolling from captures needs OLTR_CAPTURE_DIR")
    paths = [state.captures.path_of(capture_id.strip()) for capture_id in ids]
    return [Upload(path.name, path.read_bytes()) for path in paths]


async def _examples(state: ServiceState, uploads: list[Upload]) -> list[Example]:
    """Decode every image as /classify does (4xx for a bad one, before anything is written)."""
    spec = state.require_loaded().preprocess_spec
    deadline = Deadline.start(state.settings.request_timeout_s)
    pixels = await state.admission.decode(uploads, spec, deadline)
    return [Example.of(p, u.data) for p, u in zip(pixels, uploads, strict=True)]
