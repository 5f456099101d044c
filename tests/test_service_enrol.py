"""Enrolment through a real uvicorn process on the embedded default model: add, refuse, remove,
concurrent enrolments, metrics, and a restart serving the latest enrolled version."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from _service_fixtures import metric_value, mnist_digits, running_service, solid

pytestmark = pytest.mark.slow

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default" / "model.onnx"


def _env(enrol_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "OLTR_MODEL_PATH": str(DEFAULT),
        "OLTR_ADMIN_TOKEN": TOKEN,
        "OLTR_ENROL_DIR": str(enrol_dir),
        "OLTR_ENROL_MAX_IMAGES": "12",
        "OLTR_WARMUP_RUNS": "1",
        **extra,
    }


def _digits(digit: int, n: int) -> list[bytes]:
    return [data for data, _ in mnist_digits([digit], per_digit=n)]


def _form(name: str | None, images: list[bytes]) -> dict:
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return {"data": {"name": name} if name is not None else {}, "files": files}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("enrol")
    with (
        running_service(_env(root / "models"), root / "service.log") as process,
        httpx.Client(base_url=process.url, timeout=60) as client,
    ):
        yield client, root / "models"


def _label(client: httpx.Client, image: bytes) -> str:
    answer = client.post("/classify", files=[("file", ("x.png", image, "image/png"))])
    assert answer.status_code == 200, answer.text
    return answer.json()["predictions"][0]["label"]


def _versions(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def test_enrol_classify_remove(service) -> None:
    client, folder = service
    sixes = _digits(6, 10)
    assert client.post("/admin/classes", **_form("6", sixes)).status_code == 401
    added = client.post("/admin/classes", headers=AUTH, **_form("6", sixes))
    assert added.status_code == 201, added.text
    body = added.json()
    assert body["examples"] == 10 and body["previous_version"] != body["version"]
    assert client.get("/v1/model").json()["version"] == body["version"]
    assert (folder / "LATEST").read_text().strip() == body["version"]
    assert sum(_label(client, image) == "6" for image in sixes) >= 8
    listed = client.get("/admin/classes", headers=AUTH).json()["classes"]
    assert listed[-1] == {"name": "6", "index": 6, "enrolled": True, "examples": 10}
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "oltr_enrolments_total", {"action": "add"}) == 1
    assert metric_value(metrics, "oltr_enrolled_classes") == 1
    assert metric_value(metrics, "oltr_predictions_total", {"label": "6"}) >= 8

    assert client.post("/admin/classes", headers=AUTH, **_form("6", sixes[:2])).status_code == 409
    assert client.delete("/admin/classes/0", headers=AUTH).status_code == 409
    assert client.delete("/admin/classes/nine", headers=AUTH).status_code == 404
    removed = client.delete("/admin/classes/6", headers=AUTH)
    assert removed.status_code == 200, removed.text
    names = [c["name"] for c in client.get("/admin/classes", headers=AUTH).json()["classes"]]
    assert names == [str(d) for d in range(6)]
    assert metric_value(client.get("/metrics").text, "oltr_enrolled_classes") == 0


@pytest.mark.parametrize(
    ("name", "images", "status"),
    [
        ("seven", [b"not an image"], 400),
        ("seven", [solid((1, 2, 3)), b"\x89PNG\r\n\x1a\n broken"], 400),
        (None, [solid((1, 2, 3))], 400),
        ("../../etc", [solid((1, 2, 3))], 422),
        ("seven", [], 422),
        ("seven", [solid((1, 2, 3))] * 13, 413),
    ],
)
def test_bad_enrolments_write_nothing(service, name, images, status) -> None:
    client, folder = service
    before = _versions(folder)
    answer = client.post("/admin/classes", headers=AUTH, **_form(name, images))
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["message"]
    assert _versions(folder) == before


def test_concurrent_enrolments_both_land(service) -> None:
    client, _ = service

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=120) as aclient:
            return await asyncio.gather(
                *(
                    aclient.post("/admin/classes", headers=AUTH, **_form(str(d), _digits(d, 5)))
                    for d in (8, 9)
                )
            )

    answers = asyncio.run(both())
    assert [a.status_code for a in answers] == [201, 201], [a.text for a in answers]
    names = [c["name"] for c in client.get("/admin/classes", headers=AUTH).json()["classes"]]
    assert names[6:] in (["8", "9"], ["9", "8"])
    for d in ("8", "9"):
        assert client.delete(f"/admin/classes/{d}", headers=AUTH).status_code == 200


def test_restart_serves_the_latest_enrolled_version(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    with (
        running_service(_env(folder), tmp_path / "first.log") as first,
        httpx.Client(base_url=first.url, timeout=60) as client,
    ):
        version = client.post("/admin/classes", headers=AUTH, **_form("7", _digits(7, 5))).json()[
            "version"
        ]
    env = _env(folder, OLTR_SERVE_LATEST_ENROLLED="true")
    with (
        running_service(env, tmp_path / "second.log") as second,
        httpx.Client(base_url=second.url, timeout=60) as client,
    ):
        assert client.get("/v1/model").json()["version"] == version
    with (
        running_service(_env(folder), tmp_path / "third.log") as third,
        httpx.Client(base_url=third.url, timeout=60) as client,
    ):
        assert client.get("/v1/model").json()["version"] != version  # the setting is off
