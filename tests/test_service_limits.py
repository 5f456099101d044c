"""Attacks on a real uvicorn process (loopback only), each bounded in size and time.

Decode floods (per-request and service-wide pixel budgets, the request timeout over decoding),
HTTP abuse (huge or numerous headers, stalled or trickling heads and bodies, keep-alive),
requests cut off by the shutdown deadline, corrupt PNG chunks and unterminated multipart
bodies. Each test failed on the service before decode admission and the HTTP limits existed.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import httpx
import pytest
from _service_fixtures import (
    PNG_SIGNATURE,
    ServiceProcess,
    grey_ihdr,
    mnist_digits,
    png_chunk,
    running_service,
    serving_model,
    slow_standin,
    solid,
    write_model,
)

pytestmark = pytest.mark.slow

BIG_SIDE = 4500  # 20.25 Mpx: about 0.3 s to decode and resize on one core
BIG_PIXELS = BIG_SIDE * BIG_SIDE


@lru_cache(maxsize=1)
def big_png(side: int = BIG_SIDE) -> bytes:
    """A valid, fully decodable side x side black PNG of about 20 KB (a decompression flood)."""
    rows = (b"\x00" * (side + 1)) * side
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", grey_ihdr(side, side))
        + png_chunk(b"IDAT", zlib.compress(rows, 6))
        + png_chunk(b"IEND", b"")
    )


def _digit() -> list:
    data, _ = mnist_digits([3])[0]
    return [("file", ("digit.png", data, "image/png"))]


def _bigs(n: int) -> list:
    return [("file", (f"big{i}.png", big_png(), "image/png")) for i in range(n)]


# -- decode admission ---------------------------------------------------------------------------


def _serve(root: Path, **settings: object) -> contextlib.AbstractContextManager[ServiceProcess]:
    """The serving model (default, else stand-in) with ``settings`` (``max_queue=4`` is
    ``OLTR_MAX_QUEUE=4``), one warm-up round, started and stopped by the context."""
    path, _ = serving_model(root)
    env = {"OLTR_MODEL_PATH": str(path), "OLTR_WARMUP_RUNS": "1"}
    env.update({f"OLTR_{name.upper()}": str(value) for name, value in settings.items()})
    return running_service(env, root / "service.log")


@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    """A service whose decode budget holds exactly one request of two big images."""
    with _serve(
        tmp_path_factory.mktemp("budget"),
        preprocess_threads=2,
        max_request_pixels=2 * BIG_PIXELS,
        max_decode_pixels=2 * BIG_PIXELS,
    ) as service:
        yield service


def test_request_over_the_pixel_budget_is_413_before_decoding(budgeted):
    files = _bigs(3)
    started = time.monotonic()
    r = httpx.post(budgeted.url + "/classify", files=files, timeout=60)
    elapsed = time.monotonic() - started
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "too_many_pixels"
    assert "per request" in r.json()["error"]["message"]
    assert elapsed < 0.5  # three decodes would take about 1 s


def test_decode_flood_leaves_a_normal_image_answered_within_a_second(budgeted):
    """Eight parallel requests of two 20 Mpx PNGs: one is decoded, the others get 503 at
    once; a 28x28 digit sent meanwhile is answered (or refused) within 1 s."""
    url = budgeted.url + "/classify"
    digit, bigs = _digit(), _bigs(2)  # built before the clock starts
    with ThreadPoolExecutor(8) as pool:
        flood = [pool.submit(httpx.post, url, files=bigs, timeout=60) for _ in range(8)]
        time.sleep(0.1)
        started = time.monotonic()
        normal = httpx.post(url, files=digit, timeout=60)
        normal_s = time.monotonic() - started
        answers = [f.result() for f in flood]
    assert normal_s < 1.0, f"normal image waited {normal_s:.2f} s"
    assert normal.status_code in (200, 503), normal.text
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    busy = [r for r in answers if r.status_code == 503]
    assert all(r.json()["error"]["code"] == "decode_busy" for r in busy)
    assert all(r.headers["retry-after"] == "1" for r in busy)
    # the budget is whole again: the same request now goes through
    assert httpx.post(url, files=_bigs(2), timeout=60).status_code == 200


def test_request_timeout_covers_decoding(tmp_path):
    files = _bigs(2)
    with _serve(tmp_path, request_timeout_s=0.1) as service:
        started = time.monotonic()
        r = httpx.post(service.url + "/classify", files=files, timeout=60)
        elapsed = time.monotonic() - started
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout"
    assert elapsed < 0.5  # answered at the deadline, not after decoding (about 0.6 s)


# -- HTTP limits ----------------------------------------------------------------------------------

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    with _serve(
        tmp_path_factory.mktemp("http"),
        header_timeout_s=TIMEOUT_S,
        read_timeout_s=TIMEOUT_S,
        keepalive_timeout_s=TIMEOUT_S,
        max_requests_per_connection=2,
    ) as service:
        yield service


def _connect(service: ServiceProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.settimeout(10)
    return sock


def _send_all(sock: socket.socket, data: bytes) -> None:
    """Send what the server takes; it may answer and close half-way (that is the point)."""
    try:
        for i in range(0, len(data), 65536):
            sock.sendall(data[i : i + 65536])
    except (BrokenPipeError, ConnectionResetError):
        pass


def _read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def _status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_oversized_head_is_431(strict):
    with _connect(strict) as sock:
        big = b"a" * 1_000_000
        _send_all(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + big + b"\r\n\r\n")
        status, body = _status_and_json(_read_until_closed(sock))
    assert status == 431 and body["error"]["code"] == "header_too_large"


def test_too_many_header_fields_is_431(strict):
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))  # 1.6 KB, 150 fields
    with _connect(strict) as sock:
        _send_all(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        status, body = _status_and_json(_read_until_closed(sock))
    assert status == 431 and body["error"]["code"] == "too_many_headers"
    ok = httpx.get(strict.url + "/healthz", headers={f"X-F{i}": "v" for i in range(50)})
    assert ok.status_code == 200


def _assert_timed_out(raw: bytes, elapsed: float) -> None:
    """A JSON 408, then the connection closed, about TIMEOUT_S after the client went slow."""
    status, body = _status_and_json(raw)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert TIMEOUT_S * 0.8 < elapsed < TIMEOUT_S + 2


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "one-byte-a-time"])
def test_slow_head_is_closed_at_the_header_timeout(strict, trickle):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "
    with _connect(strict) as sock:
        sock.sendall(head)
        started = time.monotonic()
        if trickle:  # a byte every 0.2 s keeps any idle timer happy, not a total one
            sock.settimeout(0.2)
            raw = b""
            while time.monotonic() - started < 5 * TIMEOUT_S:
                try:
                    sock.sendall(b"a")
                    raw = sock.recv(65536)
                    break
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
            sock.settimeout(10)
            raw += _read_until_closed(sock)
        else:
            raw = _read_until_closed(sock)
        elapsed = time.monotonic() - started
    _assert_timed_out(raw, elapsed)


def test_stalled_body_is_closed_at_the_read_timeout(strict):
    with _connect(strict) as sock:
        sock.sendall(
            b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 10000\r\n\r\n" + solid((1, 2, 3))[:100]
        )
        started = time.monotonic()
        raw = _read_until_closed(sock)
        elapsed = time.monotonic() - started
    _assert_timed_out(raw, elapsed)


def test_keep_alive_is_limited_in_requests_and_idle_time(strict):
    with httpx.Client(base_url=strict.url) as client:
        first, second = client.get("/healthz"), client.get("/healthz")
    assert first.headers.get("connection") != "close"
    assert second.headers["connection"] == "close"  # OLTR_MAX_REQUESTS_PER_CONNECTION=2
    with _connect(strict) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        raw = _read_until_closed(sock)  # the answer, then the idle keep-alive close
        elapsed = time.monotonic() - started
    assert raw.startswith(b"HTTP/1.1 200")
    assert TIMEOUT_S * 0.8 < elapsed < TIMEOUT_S + 2


# -- shutdown deadline ---------------------------------------------------------------------------


def test_requests_cut_off_by_the_shutdown_deadline_get_json_503(tmp_path):
    slow = write_model(tmp_path / "slow.onnx", slow_standin())
    env = {
        "OLTR_MODEL_PATH": str(slow),
        "OLTR_MAX_BATCH_SIZE": "1",
        "OLTR_WARMUP_RUNS": "1",
        "OLTR_SHUTDOWN_TIMEOUT_S": "0.5",
    }
    service = ServiceProcess(env, tmp_path / "service.log")
    files = [("file", (f"{i}.png", solid((200, 10 * i, 10)), "image/png")) for i in range(8)]
    try:
        service.wait_until()
        with ThreadPoolExecutor(1) as pool:  # 8 images at ~0.3 s each: running at the deadline
            pending = pool.submit(httpx.post, service.url + "/classify", files=files, timeout=60)
            time.sleep(0.5)
            service.proc.send_signal(signal.SIGTERM)
            r = pending.result(timeout=60)
        assert service.proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        service.stop()
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "shutting_down"
    logs = service.logs()
    assert "cut off by the shutdown deadline" in logs
    assert "Traceback" not in logs and " ERROR " not in logs, logs


# -- corrupt images and malformed bodies --------------------------------------------------------


def _png_with_bad_crc(chunk_kind: bytes) -> bytes:
    """A valid 8x8 PNG whose ``chunk_kind`` chunk has a wrong CRC (data untouched)."""
    rows = (b"\x00" + b"\x80" * 8) * 8
    chunks = {b"IHDR": grey_ihdr(8, 8), b"IDAT": zlib.compress(rows), b"IEND": b""}
    out = PNG_SIGNATURE
    for kind, data in chunks.items():
        wrong = zlib.crc32(kind + data) ^ 1 if kind == chunk_kind else None
        out += png_chunk(kind, data, crc=wrong)
    return out


@pytest.mark.parametrize("kind", [b"IHDR", b"IDAT", b"IEND"])
def test_a_wrong_crc_in_any_png_chunk_is_400(strict, kind):
    files = [("file", ("bad.png", _png_with_bad_crc(kind), "image/png"))]
    r = httpx.post(strict.url + "/classify", files=files)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_image"
    good = [("file", ("good.png", _png_with_bad_crc(b"none"), "image/png"))]
    assert httpx.post(strict.url + "/classify", files=good).status_code == 200


def test_multipart_body_without_its_closing_boundary_is_400(strict):
    data, _ = mnist_digits([3])[0]
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + data + b"\r\n"  # no --XyZ-- follows
    )
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    r = httpx.post(strict.url + "/classify", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "bad_request"
    assert "closing boundary" in r.json()["error"]["message"]
    complete = body + b"--XyZ--\r\n"
    assert httpx.post(strict.url + "/classify", content=complete, headers=headers).is_success
