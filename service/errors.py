"""Domain errors and their JSON rendering: ``{"error": {"code", "message", "request_id"}}``.

Each error class fixes its HTTP status, a stable ``code`` for clients and the ``reason`` label
of ``oltr_rejected_requests_total`` (None: not counted as a rejection). One handler per kind of
exception is registered by :func:`install_handlers`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import metrics

log = logging.getLogger("oltr.service")
OIP_PREFIX = "/v2"  # Open Inference Protocol routes: errors are {"error": "<message>"}


class ServiceError(Exception):
    """Base of every error the service answers on purpose."""

    status: int = 400
    code: str = "bad_request"
    reason: str | None = "bad_request"
    retry_after_s: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(ServiceError):
    code = reason = "invalid_image"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = reason = "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    status = 413
    code = reason = "payload_too_large"


class TooManyPixels(ServiceError):
    status = 413
    code = reason = "too_many_pixels"


class TooManyFiles(ServiceError):
    status = 413
    code = reason = "too_many_files"


class MissingFile(ServiceError):
    status = 422
    code = reason = "missing_file"


class InvalidThreshold(ServiceError):
    """A threshold outside the values its score can take."""

    status = 422
    code = "validation_error"
    reason = "bad_request"


class BadRequest(ServiceError):
    """Malformed request that fits no narrower class."""


class ModelNotFound(ServiceError):
    status = 404
    code = "model_not_found"
    reason = "bad_request"


class CaptureDisabled(ServiceError):
    """A capture route while OLTR_CAPTURE_DIR is unset."""

    status = 404
    code = "capture_disabled"
    reason = None


class CaptureNotFound(ServiceError):
    """No capture with that id (or an id that is not 64 lower-case hex digits)."""

    status = 404
    code = "capture_not_found"
    reason = None


class CaptureUnavailable(ServiceError):
    """The capture folder cannot be read."""

    status = 503
    code = "capture_unavailable"
    reason = None


class QueueFull(ServiceError):
    status = 503
    code = reason = "queue_full"
    retry_after_s = 1


class DecodeBusy(ServiceError):
    """The service-wide decode budget is taken by other requests: retry shortly."""

    status = 503
    code = reason = "decode_busy"
    retry_after_s = 1


class ModelNotReady(ServiceError):
    status = 503
    code = "not_ready"
    reason = None
    retry_after_s = 1


class InferenceTimeout(ServiceError):
    status = 504
    code = reason = "timeout"


class Unauthorized(ServiceError):
    status = 401
    code = reason = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"
    reason = "unauthorized"


class ModelLoadError(ServiceError):
    """A model file is missing or breaks the ONNX artifact contract; names the file."""

    status = 422
    code = "invalid_model"
    reason = "bad_request"


class ClassExists(ServiceError):
    """Enrolment under a name the model already has."""

    status = 409
    code = "class_exists"
    reason = "bad_request"


class InvalidClassName(ServiceError):
    status = 422
    code = "invalid_class_name"
    reason = "bad_request"


class ClassNotFound(ServiceError):
    status = 404
    code = "class_not_found"
    reason = "bad_request"


class TrainedClass(ServiceError):
    """Removing a class the model was trained with (only enrolled classes can go)."""

    status = 409
    code = "trained_class"
    reason = "bad_request"


class EnrolmentUnavailable(ServiceError):
    """Enrolment is not configured, or the model's graph cannot take a new class."""

    status = 409
    code = "enrolment_unavailable"
    reason = "bad_request"


def request_id_of(request: Request) -> str:
    """The id the request-context middleware assigned (``-`` outside a request)."""
    return getattr(request.state, "request_id", "-")


def error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    """The JSON error document every non-2xx answer uses."""
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error; under /v2 the Open Inference Protocol's ``{"error": message}``."""
    path = request.url.path
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        body: dict[str, Any] = {"error": message}
    else:
        body = error_body(code, message, request_id_of(request))
    return JSONResponse(body, status_code=status, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)  # registered for ServiceError only
    if exc.reason is not None:
        metrics.REJECTED.labels(reason=exc.reason).inc()
    log.info("%s %s -> %d %s: %s", request.method, request.url.path, exc.status, exc.code, exc)
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
    return error_response(request, exc.status, exc.code, exc.message, headers)


def describe_errors(errors: Sequence[Mapping[str, Any]], root: str = "<root>") -> str:
    """pydantic validation errors as one line: ``a.b: message; c: message``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or root}: {e['msg']}" for e in errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    metrics.REJECTED.labels(reason="bad_request").inc()
    return error_response(request, 422, "validation_error", describe_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(request, exc.status_code, code, str(exc.detail), exc.headers)


def install_handlers(app: FastAPI) -> None:
    """Register one handler per error kind (unexpected errors: see middleware)."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
