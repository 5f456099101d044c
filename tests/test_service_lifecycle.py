"""Process lifecycle through real uvicorn processes: readiness after warm-up, provider fallback,
JSON logs, SIGTERM drain with a full queue, start-up refusal on a bad model."""

from __future__ import annotations

import base64
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from _service_fixtures import (
    ServiceProcess,
    build_standin,
    metric_value,
    slow_standin,
    solid,
    write_model,
)

pytestmark = pytest.mark.slow
# uvicorn re-raises a captured SIGTERM after its graceful shutdown, so -15 is a clean exit too
CLEAN_EXIT = (0, -signal.SIGTERM)
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("life") / "model.onnx", build_standin())


def _files(n: int) -> list:
    return [("file", (f"{i}.png", solid((250, 10 * i, 10)), "image/png")) for i in range(n)]


def test_ready_only_after_warm_up_with_visible_fallback(standin, tmp_path):
    env = {
        "OLTR_MODEL_PATH": str(standin),
        "OLTR_WARMUP_MIN_S": "3",
        "OLTR_JSON_LOGS": "true",
        "OLTR_PROVIDERS": "cpu" if HAS_CUDA else "cuda",
    }
    service = ServiceProcess(env, tmp_path / "service.log", cli="uvicorn")
    try:
        service.wait_until("/healthz", 200)
        fresh = httpx.get(service.url + "/metrics").text
        for series in (
            'oltr_images_classified_total{outcome="known"} 0.0',
            'oltr_images_classified_total{outcome="unknown"} 0.0',
            'oltr_rejected_requests_total{reason="queue_full"} 0.0',
            'oltr_predictions_total{label="green"} 0.0',
        ):
            assert series in fresh  # exist at 0 before the first image, for rate()
        not_ready = httpx.get(service.url + "/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["status"] == "warming_up"
        early = httpx.post(service.url + "/classify", files=_files(1))
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert early.json()["error"]["code"] == "not_ready"
        _assert_v2_not_ready(service)
        started = time.monotonic()
        service.wait_until("/readyz", 200)
        assert time.monotonic() - started > 1.0  # the warm-up really held readiness back
        assert httpx.post(service.url + "/classify", files=_files(1)).status_code == 200
        if not HAS_CUDA:
            providers = httpx.get(service.url + "/v1/model").json()["providers"]
            assert providers["requested"][0] == "CUDAExecutionProvider"
            assert providers["active"] == ["CPUExecutionProvider"] and providers["fallback"]
            metrics = httpx.get(service.url + "/metrics").text
            assert metric_value(metrics, "oltr_provider_fallback") == 1
    finally:
        assert service.stop() in CLEAN_EXIT
    assert "Application shutdown complete" in service.logs()
    records = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    assert records and all(
        {"ts", "level", "logger", "message", "request_id"} <= r.keys() for r in records
    )
    if not HAS_CUDA:
        assert any(r["level"] == "warning" and "provider fallback" in r["message"] for r in records)
    assert any(r["message"].startswith("ready: model") for r in records)


def _assert_v2_not_ready(service: ServiceProcess) -> None:
    """The Open Inference Protocol says the same while warming up: live, not ready, 503."""
    client = triton.InferenceServerClient(url=f"127.0.0.1:{service.port}")
    try:
        assert client.is_server_live()
        assert not client.is_server_ready() and not client.is_model_ready("oltr")
    finally:
        client.close()
    image = base64.b64encode(solid((250, 10, 10))).decode()
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}
    early = httpx.post(service.url + "/v2/models/oltr/infer", json={"inputs": [tensor]})
    assert early.status_code == 503 and early.headers["retry-after"] == "1"
    assert set(early.json()) == {"error"} and "not ready" in early.json()["error"]


def test_sigterm_drains_queued_requests(tmp_path):
    # A slow stand-in (32 conv layers at 128 px, ~0.3 s per image on 2 cores) run one image
    # per batch: of 6 concurrent requests 1 runs, 2 queue (OLTR_MAX_QUEUE=2), 3 are refused.
    slow = write_model(tmp_path / "slow.onnx", slow_standin())
    env = {
        "OLTR_MODEL_PATH": str(slow),
        "OLTR_MAX_BATCH_SIZE": "1",
        "OLTR_MAX_QUEUE": "2",
        "OLTR_MAX_FILES": "1",
        "OLTR_WARMUP_RUNS": "1",
    }
    service = ServiceProcess(env, tmp_path / "service.log")
    try:
        service.wait_until()

        def post() -> httpx.Response:
            return httpx.post(service.url + "/classify", files=_files(1), timeout=60)

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post) for _ in range(6)]
            refused = []
            for future in as_completed(futures, timeout=60):
                refused.append(future.result())
                if len(refused) == 3:  # all 6 reached the server; 3 are still in it
                    break
            service.proc.send_signal(signal.SIGTERM)
            responses = [f.result(timeout=60) for f in futures]
        assert [r.status_code for r in refused] == [503] * 3
        assert sorted(r.status_code for r in responses) == [200] * 3 + [503] * 3
        full = refused[0]
        assert full.json()["error"]["code"] == "queue_full"
        assert full.headers["retry-after"] == "1"
        assert service.proc.wait(timeout=30) in CLEAN_EXIT
        with pytest.raises(httpx.TransportError):
            post()
    finally:
        service.stop()
    logs = service.logs()
    assert "shutdown: batcher drained" in logs and "Application shutdown complete" in logs
    assert logs.index("Shutting down") < logs.rindex('"POST /classify HTTP/1.1" 200')


def test_sigterm_serves_a_request_sent_on_an_idle_keep_alive_connection(standin, tmp_path):
    """The race a proxy loses a POST to: SIGTERM finds a keep-alive connection idle, and a
    request goes out on it right after. The connection stays open (uvicorn alone closes it at
    once), the request is answered, with ``Connection: close``, and the process exits."""
    env = {"OLTR_MODEL_PATH": str(standin), "OLTR_KEEPALIVE_TIMEOUT_S": "3"}
    service = ServiceProcess(env, tmp_path / "service.log")
    try:
        service.wait_until()
        with httpx.Client(base_url=service.url, timeout=30) as client:
            first = client.post("/classify", files=_files(1))
            assert first.status_code == 200 and "close" not in first.headers.get("connection", "")
            service.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # uvicorn has stopped listening and shut its connections down
            with pytest.raises(httpx.ConnectError):
                httpx.get(service.url + "/healthz", timeout=5)  # no new connection
            late = client.post("/classify", files=_files(1))  # the kept-alive connection
        assert late.status_code == 200 and late.headers["connection"] == "close"
        assert late.json()["predictions"][0]["label"] == first.json()["predictions"][0]["label"]
        started = time.monotonic()
        assert service.proc.wait(timeout=30) in CLEAN_EXIT
        assert time.monotonic() - started < 10
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OLTR_MODEL_PATH": "/nowhere/model.onnx"}, "model file not found: /nowhere/model.onnx"),
        ({"OLTR_UNKNOWN_SCORE": "energy"}, "set OLTR_THRESHOLD too"),
    ],
)
def test_startup_refuses_a_bad_model_or_policy(standin, tmp_path, env, message):
    service = ServiceProcess({"OLTR_MODEL_PATH": str(standin), **env}, tmp_path / "s.log")
    assert service.proc.wait(timeout=60) != 0
    service.stop()
    assert "start-up failed" in service.logs() and message in service.logs()


def test_readiness_states_are_one_enum_in_code_and_schema():
    from service.app import create_app
    from service.schemas import ServiceStatus

    spec = create_app().openapi()["components"]["schemas"]
    assert spec["ServiceStatus"]["enum"] == [s.value for s in ServiceStatus]
    assert spec["Readiness"]["properties"]["status"]["$ref"].endswith("/ServiceStatus")
    assert {"loading", "warming_up", "ready", "warmup_failed", "shutting_down"} == set(
        ServiceStatus
    )
