"""Read the images of a /classify request: multipart ``file`` fields or one raw image/* body.

Bodies are streamed through the body-limit middleware, so an oversized upload fails while it
is read. Multipart parts are counted as they arrive (``max_files``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.errors import BadRequest, MissingFile, TooManyFiles, UnsupportedMediaType

FIELD = "file"
MAX_TEXT_FIELD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


async def read_uploads(request: Request, *, max_files: int) -> list[Upload]:
    """The uploaded images in order; raises 4xx domain errors for anything else."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _read_multipart(request, max_files)
    if media_type.startswith("image/"):
        return [Upload(None, await request.body())]
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


async def _read_multipart(request: Request, max_files: int) -> list[Upload]:
    parser = _CheckedMultiPartParser(
        request.headers,
        request.stream(),
        max_files=max_files,
        max_fields=max_files,
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
        parts = form.getlist(FIELD)
        if not parts:
            raise MissingFile(
                f"no {FIELD!r} field in the form (fields received: {sorted(set(form.keys()))})"
            )
        uploads = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise MissingFile(f"field {FIELD!r} must be a file upload (with a filename)")
            uploads.append(Upload(part.filename, await part.read()))
        return uploads
    finally:
        await form.close()
