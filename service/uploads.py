"""Read the images of a /classify request: multipart ``file`` fields or one raw image/* body.

Bodies are streamed through the body-limit middleware, so an oversized upload fails while it
is read. Multipart parts are counted as they arrive (``max_files``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from service.errors import BadRequest, MissingFile, TooManyFiles, UnsupportedMediaType

FIELD = "file"
MAX_TEXT_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes
    content_type: str | None = None
    """As the client declared it (the part's or the raw body's Content-Type), unchecked."""


async def read_uploads(request: Request, *, max_files: int) -> list[Upload]:
    """The uploaded images in order; raises 4xx domain errors for anything else."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart(request, max_files)
    if media_type.startswith("image/"):
        return [Upload(None, await request.body(), media_type)]
    raise UnsupportedMediaType(
        f"Content-Type {media_type or '(missing)'} is not supported: send multipart/form-data "
        f"with one or more {FIELD!r} file fields, or one image as a raw image/* body"
    )


class _CheckedMultiPartParser(MultiPartParser):
    """Starlette's parser, remembering whether the closing boundary arrived (python-multipart
    accepts a body that stops before it and drops the unfinished part without a word)."""

    complete = False

    def on_end(self) -> None:
        self.complete = True


@dataclass(frozen=True)
class Form:
    """A multipart form: its file parts (any field name) and its text fields."""

    files: dict[str, list[Upload]]
    fields: dict[str, list[str]]


async def read_form(request: Request, *, max_files: int, max_fields: int) -> Form:
    """Parse a multipart body (whole, to its closing boundary) or a URL-encoded form (text
    fields only); 415 for any other body, 4xx domain errors for a malformed one."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "application/x-www-form-urlencoded":
        return await _read_urlencoded(request, max_fields)
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType("expected a multipart/form-data or URL-encoded form")
    parser = _CheckedMultiPartParser(
        request.headers,
        request.stream(),
        max_files=max_files,
        max_fields=max_fields,
        max_part_size=MAX_TEXT_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as err:
        if err.message.startswith("Too many files"):
            raise TooManyFiles(f"at most {max_files} files per request") from err
        raise BadRequest(f"malformed multipart body: {err.message}") from err
    if not parser.complete:
        await form.close()
        for spooled in parser._files_to_close_on_error:  # the unfinished part's file too
            spooled.close()
        raise BadRequest("malformed multipart body: it ends before the closing boundary")
    try:
        files: dict[str, list[Upload]] = {}
        fields: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.setdefault(key, []).append(
                    Upload(value.filename, await value.read(), value.content_type)
                )
            else:
                fields.setdefault(key, []).append(value)
        return Form(files, fields)
    finally:
        await form.close()


async def _read_urlencoded(request: Request, max_fields: int) -> Form:
    parsed = await FormParser(request.headers, request.stream()).parse()
    texts: dict[str, list[str]] = {}
    for key, value in parsed.multi_items():
        texts.setdefault(key, []).append(str(value))
    if sum(len(v) for v in texts.values()) > max_fields:
        raise BadRequest(f"at most {max_fields} form fields")
    return Form({}, texts)


async def _read_multipart(request: Request, max_files: int) -> list[Upload]:
    form = await read_form(request, max_files=max_files, max_fields=max_files)
    uploads = form.files.get(FIELD, [])
    if FIELD in form.fields:
        raise MissingFile(f"field {FIELD!r} must be a file upload (with a filename)")
    if not uploads:
        received = sorted({*form.files, *form.fields})
        raise MissingFile(f"no {FIELD!r} field in the form (fields received: {received})")
    return uploads
