"""Request middleware in-process: the body limit stops reading early; unexpected errors answer
a JSON 500 whose request id is in the log."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
from fastapi import FastAPI, Request

from service.errors import install_handlers
from service.middleware import RequestContextMiddleware

LIMIT = 1000
CHUNK = 600


def _app() -> FastAPI:
    app = FastAPI()
    install_handlers(app)

    @app.post("/read")
    async def read(request: Request) -> dict:
        return {"bytes": sum([len(c) async for c in request.stream()])}

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("kaboom")

    app.add_middleware(RequestContextMiddleware, max_body_bytes=LIMIT)
    return app


def _call(app: FastAPI, chunks: int, content_length: int | None) -> tuple[int, dict, int]:
    """Drive the ASGI app with a body of ``chunks`` x CHUNK bytes; count chunks pulled."""
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": pulled < chunks}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(_scope(app, content_length), receive, send))
    body = json.loads(
        b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    )
    return sent[0]["status"], body, pulled


def _scope(app: FastAPI, content_length: int | None) -> dict:
    headers = [(b"content-type", b"application/octet-stream")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/read",
        "raw_path": b"/read",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "app": app,
    }


def test_small_body_passes():
    status, body, pulled = _call(_app(), chunks=1, content_length=CHUNK)
    assert (status, body, pulled) == (200, {"bytes": CHUNK}, 1)


def test_streamed_body_stops_at_the_limit():
    # 100 chunks of 600 bytes on offer; the limit (1000) is passed by the 2nd chunk, so the
    # middleware refuses there: 2 chunks read, 98 never pulled, nothing buffered beyond 1200 B.
    status, body, pulled = _call(_app(), chunks=100, content_length=None)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert pulled == 2


def test_declared_length_over_limit_reads_nothing():
    status, body, pulled = _call(_app(), chunks=100, content_length=60_000)
    assert status == 413 and "60000 bytes" in body["error"]["message"]
    assert pulled == 0


def test_unexpected_error_is_500_with_logged_request_id(caplog):
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/boom", headers={"X-Request-ID": "req-42"})

    with caplog.at_level(logging.ERROR, logger="oltr.service"):
        response = asyncio.run(scenario())
    assert response.status_code == 500
    assert response.json()["error"] == {
        "code": "internal_error",
        "message": "internal server error; quote the request id",
        "request_id": "req-42",
    }
    assert response.headers["x-request-id"] == "req-42"
    record = next(r for r in caplog.records if "unhandled error" in r.getMessage())
    assert record.request_id == "req-42"
    assert "kaboom" in caplog.text  # the traceback is logged


def test_client_request_id_must_be_plain():
    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/read", content=b"abc", headers={"X-Request-ID": "a b\x7f"})

    response = asyncio.run(scenario())
    assert response.status_code == 200
    assert len(response.headers["x-request-id"]) == 32  # replaced by a fresh uuid4 hex


def test_client_disconnect_is_logged_not_an_error(caplog):
    app, sent = _app(), []

    async def receive() -> dict:
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO, logger="oltr.service"):
        asyncio.run(app(_scope(app, None), receive, send))
    assert sent == []  # nobody left to answer
    assert "client disconnected during POST /read" in caplog.text
    assert "unhandled error" not in caplog.text
