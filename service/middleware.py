"""Pure ASGI middleware: request id, request metrics, body limit, last-resort 500.

- Request id: ``X-Request-ID`` from the client when it is short and plain, else a new uuid4;
  set on ``request.state.request_id``, in the log context and on the response header.
- Body limit: a declared ``Content-Length`` over the limit, or streamed bytes passing it, make
  the next ``receive()`` raise :class:`PayloadTooLarge` (rendered as 413 by its handler)
  before more of the body is read; nothing is buffered here.
- Unexpected exceptions: logged with the request id and traceback, answered with a JSON 500
  carrying the same id. A request cut off by the shutdown deadline (uvicorn cancels it) gets
  a JSON 503 with Retry-After and one warning line, no traceback. A client that disconnects
  mid-upload is logged (status 499), not an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import PayloadTooLarge, error_body
from service.logs import REQUEST_ID

log = logging.getLogger("oltr.service")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestContextMiddleware:
    """Request id + metrics + body limit + 500 fallback for every HTTP request."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        status = {"code": 500, "started": False}
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, self._limited(scope, receive), send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs when OLTR_SHUTDOWN_TIMEOUT_S ends: an expected
            # end of the drain, answered like any refusal (not uvicorn's text/plain 500).
            status["code"] = 503
            log.warning("%s %s cut off by the shutdown deadline", scope["method"], scope["path"])
            if not status["started"]:
                await _send_json(send_with_id, 503, _shutdown_body(request_id), retry_after_s=1)
        except ClientDisconnect:
            status["code"] = 499  # nginx's "client closed request": nobody to answer
            log.info("client disconnected during %s %s", scope["method"], scope["path"])
        except Exception:
            log.exception(
                "unhandled error in %s %s",
                scope["method"],
                scope["path"],
                extra={"request_id": request_id},
            )
            if not status["started"]:
                await _send_json(send_with_id, 500, _internal_body(request_id))
        finally:
            endpoint = _endpoint(scope)
            metrics.REQUESTS.labels(endpoint, scope["method"], str(status["code"])).inc()
            metrics.REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - start)
            REQUEST_ID.reset(token)

    def _limited(self, scope: Scope, receive: Receive) -> Receive:
        limit = self.max_body_bytes
        declared = _content_length(scope)
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            if declared is not None and declared > limit:
                raise PayloadTooLarge(
                    f"request body is {declared} bytes (Content-Length); the limit is {limit}"
                )
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        return receive_limited


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if _CLIENT_ID.match(text):
                return text
    return uuid.uuid4().hex


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _endpoint(scope: Scope) -> str:
    """Route template (bounded label); 'unmatched' for paths no route serves."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def _internal_body(request_id: str) -> dict[str, Any]:
    return error_body("internal_error", "internal server error; quote the request id", request_id)


def _shutdown_body(request_id: str) -> dict[str, Any]:
    return error_body(
        "shutting_down", "the service shut down before this request finished; retry", request_id
    )


async def _send_json(
    send: Send, status: int, body: dict[str, Any], *, retry_after_s: int | None = None
) -> None:
    payload = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if retry_after_s is not None:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
