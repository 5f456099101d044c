"""The open-world loop end to end, over real HTTP on the embedded default model: a digit it never
saw is called unknown -> captured -> discovery groups it -> enrolled from the group's captures
-> the same image comes back as the new class, and the metrics show the new label."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from _service_fixtures import metric_value, mnist_digits, running_service

pytestmark = pytest.mark.slow

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default" / "model.onnx"
STRICT = 5.0
"""A request threshold above every known digit's combined score: each image is called unknown,
as a new class would be, so the capture sees all of them."""


def _post(client: httpx.Client, images: list[bytes], **params: float) -> list[dict]:
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    answer = client.post("/classify", files=files, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"]


def test_unknown_captured_grouped_enrolled_recognised(tmp_path: Path) -> None:
    sevens = [data for data, _ in mnist_digits([7], per_digit=12)]
    threes = [data for data, _ in mnist_digits([3], per_digit=12)]  # known, flagged too
    env = {
        "OLTR_MODEL_PATH": str(DEFAULT),
        "OLTR_ADMIN_TOKEN": TOKEN,
        "OLTR_CAPTURE_DIR": str(tmp_path / "captures"),
        "OLTR_ENROL_DIR": str(tmp_path / "models"),
        "OLTR_WARMUP_RUNS": "1",
    }
    with (
        running_service(env, tmp_path / "service.log") as service,
        httpx.Client(base_url=service.url, timeout=120) as client,
    ):
        first = _post(client, sevens, threshold=STRICT) + _post(client, threes, threshold=STRICT)
        assert all(p["unknown"] for p in first)
        assert all(p["label"] != "7" for p in first)  # the model has no 7

        ids = {hashlib.sha256(data).hexdigest() for data in sevens}
        other = {hashlib.sha256(data).hexdigest() for data in threes}
        captured = _wait_for_captures(client, len(ids | other))
        assert {item["id"] for item in captured} == ids | other

        groups = client.get("/admin/captures/groups", headers=AUTH).json()["groups"]
        biggest = max(groups, key=lambda g: len(ids & set(g["ids"])))
        sevens_in = len(ids & set(biggest["ids"]))
        assert sevens_in >= len(ids) // 2  # most sevens in one group ...
        assert sevens_in / biggest["size"] >= 0.75  # ... that is mostly sevens

        form = {"name": "7", "capture": biggest["ids"]}
        enrolled = client.post("/admin/classes", headers=AUTH, data=form, files=[])
        assert enrolled.status_code == 201, enrolled.text

        image = next(data for data in sevens if hashlib.sha256(data).hexdigest() in biggest["ids"])
        assert _post(client, threes[:1])[0]["label"] == "3"  # a known digit still answers 3
        (again,) = _post(client, [image])
        assert again["label"] == "7" and not again["unknown"]
        assert client.get("/v1/model").json()["version"] == enrolled.json()["version"]
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "oltr_predictions_total", {"label": "7"}) >= 1
        kept = metric_value(metrics, "oltr_captured_images_total", {"result": "kept"})
        assert kept >= len(ids | other)
        assert metric_value(metrics, "oltr_enrolments_total", {"action": "add"}) == 1


def _wait_for_captures(client: httpx.Client, n: int) -> list[dict]:
    """Captures are written off the request path: poll until ``n`` are listed."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = client.get("/admin/captures", headers=AUTH, params={"limit": 1000}).json()
        if body["total"] >= n:
            return body["items"]
        time.sleep(0.2)
    raise AssertionError(f"only {body['total']} of {n} images captured")
