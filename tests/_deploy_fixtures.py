"""Shared helpers for the deploy and monitoring tests: paths, the metric contract, PromQL names."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from benchmarks.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = shared_data_dir()
DOCKER = REPO / "docker"
PROMETHEUS_DIR = DOCKER / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
DASHBOARDS = sorted((DOCKER / "grafana" / "dashboards").glob("*.json"))
SCRAPE_JOB = "oltr-classifier"

# The service's Prometheus metrics (shared contract, service/metrics.py), as exposed series names.
CONTRACT_COUNTERS = (
    "oltr_requests",
    "oltr_images_classified",
    "oltr_predictions",
    "oltr_rejected_requests",
    "oltr_captured_images",
    "oltr_capture_evicted_images",
    "oltr_enrolments",
)
CONTRACT_HISTOGRAMS = (
    "oltr_request_duration_seconds",
    "oltr_reachability",
    "oltr_confidence",
    "oltr_batch_size",
    "oltr_inference_duration_seconds",
)
CONTRACT_GAUGES = (
    "oltr_queue_depth",
    "oltr_images_in_flight",
    "oltr_model_info",
    "oltr_provider_fallback",
    "oltr_unknown_threshold",
    "oltr_capture_bytes",
    "oltr_enrolled_classes",
)
PROMETHEUS_SERIES = ("up",)  # written by Prometheus itself for every target


def contract_series() -> set[str]:
    """Every series name the contract allows in a query (counter _total, histogram parts)."""
    names = {f"{c}_total" for c in CONTRACT_COUNTERS} | set(CONTRACT_GAUGES)
    for h in CONTRACT_HISTOGRAMS:
        names |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names | set(PROMETHEUS_SERIES)


def require_tool(name: str) -> str:
    """Path of a system tool, or skip the test with the command that installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: run scripts/install-system-deps.sh (CI does)")
    return path


def load_rules() -> list[dict]:
    """Every rule (recording and alerting) from docker/prometheus/rules/*.yml."""
    rules = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += group["rules"]
    return rules


def recorded_names() -> set[str]:
    """Names of the recording rules the project defines."""
    return {rule["record"] for rule in load_rules() if "record" in rule}


def dashboard_exprs(path: Path) -> list[tuple[str, str]]:
    """(panel title, PromQL expr) for every query target of a Grafana dashboard JSON file."""
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(json.loads(path.read_text())["panels"])
    return found


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^}]*\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_NUMBERS = re.compile(r"(?<![A-Za-z0-9_:.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, labels and durations removed)."""
    text = _STRINGS.sub(" ", expr)
    text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    text = _NUMBERS.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group()
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and name.lower() not in _KEYWORDS:
            names.add(name)
    return names
