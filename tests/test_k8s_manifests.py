"""docker/k8s/ without a cluster: schema validation offline, and a cross-check against the real
service, so a renamed setting, route or port breaks the build.

Built-in kinds are validated by ``kubernetes-validate`` (the Kubernetes JSON schemas ship in its
PyPI package) in strict mode (unknown fields fail) at the oldest and newest versions listed
below; the custom resources (KServe InferenceService, ServiceMonitor) and the Prometheus
adapter's rules by the JSON schemas in docker/k8s/schemas/ (see its README), whose embedded
Kubernetes objects (containers, metadata) resolve to the same Kubernetes schemas.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from _deploy_fixtures import CONTRACT_GAUGES, DOCKER
from kubernetes_validate.utils import latest_version, major_minor, schema_contents
from referencing import Registry, Resource

from service.app import create_app
from service.config import ENV_PREFIX, Settings, load_settings

K8S = DOCKER / "k8s"
SCHEMAS = K8S / "schemas"
MANIFESTS = sorted(K8S.rglob("*.yaml"))
K8S_VERSIONS = ("1.33", major_minor(latest_version()))
CRD_SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice-v1beta1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.json",
}
ADAPTER_RULES = K8S / "monitoring" / "prometheus-adapter-rules.yaml"
READINESS_ROUTES = {"/readyz", "/v2/health/ready"}
LIVENESS_ROUTES = {"/healthz", "/v2/health/live"}
DEFAULT_GRACE_S = 30  # Kubernetes' terminationGracePeriodSeconds when unset


def _documents() -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def _of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path, doc in _documents() if doc["kind"] == kind]


def _crd_validator(schema_file: str, version: str) -> jsonschema.Validator:
    """A validator for a custom resource whose Kubernetes parts use the real schemas."""
    definitions = schema_contents(
        f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json", version
    )
    registry = Resource.from_contents(definitions) @ Registry()
    schema = json.loads((SCHEMAS / schema_file).read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_offline(version: str) -> None:
    documents = _documents()
    assert len(documents) >= 10, [p.name for p, _ in documents]
    for path, doc in documents:
        where = f"{path.relative_to(K8S)} ({doc['kind']})"
        crd = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        try:
            if crd is None:
                kubernetes_validate.validate(doc, version, strict=True)
            else:
                _crd_validator(crd, version).validate(doc)
        except jsonschema.ValidationError as err:
            pytest.fail(f"{where}: {err.message} at {list(err.absolute_path)}")


def test_the_deployment_pieces_are_all_there() -> None:
    kinds = sorted(doc["kind"] for _, doc in _documents())
    for kind in (
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "InferenceService",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
    ):
        assert kind in kinds, kind
    variants = {
        doc["metadata"]["labels"]["app.kubernetes.io/component"]: doc
        for _, doc in _of_kind("Deployment")
    }
    assert set(variants) == {"cpu", "gpu"}
    assert {d["metadata"]["name"] for d in variants.values()} == {
        "oltr-classifier"
    }  # one or the other
    gpu = _container(variants["gpu"])["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == 1 and gpu["requests"]["nvidia.com/gpu"] == 1
    cpu = _container(variants["cpu"])["resources"]
    assert "cpu" in cpu["requests"] and "nvidia.com/gpu" not in cpu.get("limits", {})


def test_the_adapter_rules_validate_and_serve_a_real_gauge() -> None:
    config = yaml.safe_load(yaml.safe_load(ADAPTER_RULES.read_text())["data"]["config.yaml"])
    schema = json.loads((SCHEMAS / "prometheus-adapter-config.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(config)
    served = {rule["name"]["as"] for rule in config["rules"]}
    for rule in config["rules"]:
        series = rule["seriesQuery"].split("{")[0].strip("'\" ")
        # the contract's gauges, which test_deploy_static checks against service/metrics.py
        assert series in CONTRACT_GAUGES, f"{series} is no gauge of service/metrics.py"
        assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
    ((_, hpa),) = _of_kind("HorizontalPodAutoscaler")
    pods_metrics = [
        m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"
    ]
    assert pods_metrics and set(pods_metrics) <= served
    assert any(
        m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]
    )


# -- against the real service ------------------------------------------------------------------


def _container(workload: dict) -> dict:
    spec = workload["spec"]
    pod = spec["template"]["spec"] if "template" in spec else spec["predictor"]
    (container,) = pod["containers"]
    return container


def _pod(workload: dict) -> dict:
    spec = workload["spec"]
    return spec["template"]["spec"] if "template" in spec else spec["predictor"]


def _env(container: dict) -> dict[str, str]:
    """The environment a container gets: referenced ConfigMaps, then its own env list."""
    configmaps = {doc["metadata"]["name"]: doc["data"] for _, doc in _of_kind("ConfigMap")}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(configmaps[source["configMapRef"]["name"]])
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def _workloads() -> list[tuple[str, dict]]:
    return [
        (f"{path.relative_to(K8S)}", doc)
        for path, doc in _documents()
        if doc["kind"] in ("Deployment", "InferenceService")
    ]


def _settings_of(container: dict, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The container's OLTR_* environment through the service's own settings loader."""
    env = _env(container)
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    oltr = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)}
    unknown = set(oltr) - fields
    assert not unknown, f"not settings of service/config.py: {sorted(unknown)}"
    for key in fields:
        monkeypatch.delenv(key, raising=False)
    for key, value in oltr.items():
        monkeypatch.setenv(key, value)
    return load_settings()


@pytest.fixture(scope="module")
def get_routes() -> set[str]:
    """GET paths of the real FastAPI app (its OpenAPI route list)."""
    paths = create_app(Settings()).openapi()["paths"]
    return {path for path, ops in paths.items() if "get" in ops}


@pytest.mark.parametrize("name", [name for name, _ in _workloads()])
def test_workload_matches_the_service(name: str, get_routes: set[str], monkeypatch) -> None:
    workload = dict(_workloads())[name]
    container = _container(workload)
    settings = _settings_of(container, monkeypatch)
    assert settings.host == "0.0.0.0", "the service must listen beyond loopback in a pod"
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [settings.port], "containerPort must be OLTR_PORT"

    probes = {kind: container.get(f"{kind}Probe") for kind in ("startup", "readiness", "liveness")}
    assert probes["readiness"]["httpGet"]["path"] in READINESS_ROUTES
    assert probes["liveness"]["httpGet"]["path"] in LIVENESS_ROUTES
    for kind, probe in probes.items():
        if probe is None:
            continue
        get = probe["httpGet"]
        assert get["path"] in get_routes, f"{kind} probe: no GET route {get['path']}"
        assert ports.get(get["port"], get["port"]) == settings.port, f"{kind} probe port"

    _assert_scraped(workload, settings, get_routes)

    pod = _pod(workload)
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
    assert grace > pre_stop + settings.shutdown_timeout_s, "SIGTERM drain would be cut short"
    _assert_model_comes_from_storage(container, settings)


def _assert_scraped(workload: dict, settings: Settings, get_routes: set[str]) -> None:
    """Pod annotations for Prometheus (KServe: its own, which it turns into those)."""
    if workload["kind"] == "InferenceService":
        annotations = workload["metadata"]["annotations"]
        assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
        prefix = "prometheus.kserve.io"
    else:
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        prefix = "prometheus.io"
    assert annotations[f"{prefix}/path"] in get_routes
    assert int(annotations[f"{prefix}/port"]) == settings.port


def _assert_model_comes_from_storage(container: dict, settings: Settings) -> None:
    env = _env(container)
    model = settings.model_path.as_posix()
    if "STORAGE_URI" in env:  # KServe's storage initializer fills /mnt/models
        assert model.startswith("/mnt/models/"), model
        return
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(model.startswith(m.rstrip("/") + "/") for m in mounts), f"{model} not on a volume"


def test_rollouts_keep_every_replica_until_its_successor_is_ready() -> None:
    for _, deployment in _of_kind("Deployment"):
        rolling = deployment["spec"]["strategy"]["rollingUpdate"]
        assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
        assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
        assert _container(deployment)["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_service_pdb_monitor_and_hpa_select_the_deployment() -> None:
    deployments = [doc for _, doc in _of_kind("Deployment")]
    for _, doc in (
        _of_kind("Service") + _of_kind("PodDisruptionBudget") + _of_kind("ServiceMonitor")
    ):
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        for deployment in deployments:
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), (doc["kind"], selector)
    ((_, service),) = _of_kind("Service")
    port_names = {p["name"] for d in deployments for p in _container(d)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    ((_, monitor),) = _of_kind("ServiceMonitor")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]
    }
    ((_, hpa),) = _of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment"
    assert target["name"] in {d["metadata"]["name"] for d in deployments}
    ((_, pdb),) = _of_kind("PodDisruptionBudget")
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]  # a drain keeps one serving
