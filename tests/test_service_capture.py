"""Capture through a real uvicorn process on the default model: only unknown images are kept,
with sidecars that match the answers; the admin routes list, serve and group them; sampling; a
folder that cannot be written never fails /classify and is counted."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest
from _service_fixtures import metric_value, mnist_digits, running_service, serving_model

from service.capture import FIELDS

pytestmark = pytest.mark.slow

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALL_UNKNOWN = {"threshold": 1000.0}  # per request: every image's score is below it


def _env(model: Path, capture_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "OLTR_MODEL_PATH": str(model),
        "OLTR_ADMIN_TOKEN": TOKEN,
        "OLTR_WARMUP_RUNS": "1",
        "OLTR_CAPTURE_DIR": str(capture_dir),
        **extra,
    }


def _captured(client: httpx.Client, result: str) -> float:
    text = client.get("/metrics").text
    return metric_value(text, "oltr_captured_images_total", {"result": result})


def _wait_for_results(client: httpx.Client, expected: dict[str, float]) -> None:
    """Poll the metrics until the writer thread has handled everything offered."""
    deadline = time.monotonic() + 20
    while {r: _captured(client, r) for r in expected} != expected:
        assert time.monotonic() < deadline, {r: _captured(client, r) for r in expected}
        time.sleep(0.05)


def _post(client: httpx.Client, digits: list[tuple[bytes, int]], **params: float) -> httpx.Response:
    files = [
        ("file", (f"digit-{d}-{i}.png", data, "image/png")) for i, (data, d) in enumerate(digits)
    ]
    r = client.post("/classify", files=files, params=params)
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def captured(tmp_path_factory):
    root = tmp_path_factory.mktemp("capture")
    model, is_default = serving_model(root)
    if not is_default:
        pytest.skip("needs the committed default model (models/default)")
    folder = root / "captures"
    env = _env(model, folder, OLTR_ENROL_DIR=str(root / "enrolled"))
    with (
        running_service(env, root / "service.log") as service,
        httpx.Client(base_url=service.url, timeout=60) as client,
    ):
        known = _post(client, mnist_digits(range(6), per_digit=2))  # card threshold
        new = mnist_digits(range(6, 10), per_digit=10)
        forced = [_post(client, new[i : i + 8], **ALL_UNKNOWN) for i in range(0, len(new), 8)]
        answers = [known, *forced]
        unknown = sum(p["unknown"] for r in answers for p in r.json()["predictions"])
        _wait_for_results(client, {"kept": unknown, "failed": 0, "sampled_out": 0})
        yield client, folder, answers, service


def test_only_unknown_images_are_kept_with_matching_sidecars(captured) -> None:
    client, folder, answers, _ = captured
    sent = {}
    for r in answers:
        for p in r.json()["predictions"]:
            if p["unknown"]:
                sent[p["filename"], r.headers["x-request-id"]] = (p, r.json())
    listing = client.get("/admin/captures", params={"limit": 1000}, headers=AUTH).json()
    assert listing["total"] == len(sent) == len(list(folder.glob("*.json")))
    received = [item["received"] for item in listing["items"]]
    assert received == sorted(received, reverse=True)
    for item in listing["items"]:
        assert list(item) == list(FIELDS)
        p, answer = sent[item["filename"], item["request_id"]]
        assert item["label"] == p["label"] and item["score"] == pytest.approx(p["score"])
        assert item["confidence"] == pytest.approx(p["confidence"])
        assert item["reachability"] == pytest.approx(p["reachability"])
        assert item["threshold"] == answer["threshold"]
        assert item["unknown_score"] == answer["unknown_score"]
        assert item["model_version"] == answer["model_version"]
        assert item["content_type"] == "image/png"
        assert item["nearest_class"] in [str(d) for d in range(6)]


def test_a_capture_is_the_bytes_as_sent(captured) -> None:
    client, folder, _, _ = captured
    sent = {data for data, _ in mnist_digits(range(10), per_digit=10)}
    items = client.get("/admin/captures", headers=AUTH).json()["items"]
    assert items
    for item in items[:5]:
        r = client.get(f"/admin/captures/{item['id']}", headers=AUTH)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content in sent and hashlib.sha256(r.content).hexdigest() == item["id"]
        assert r.content == (folder / f"{item['id']}.png").read_bytes()
    gauge = metric_value(client.get("/metrics").text, "oltr_capture_bytes")
    assert gauge == sum(p.stat().st_size for p in folder.iterdir())


@pytest.mark.parametrize(
    "bad",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "..",
        "A" * 64,
        "a" * 63,
        "%2e%2e%2fservice.log",
        "a" * 64 + ".json",
    ],
)
def test_ids_outside_the_pattern_are_404(captured, bad: str) -> None:
    client, _, _, _ = captured
    r = client.get(f"/admin/captures/{bad}", headers=AUTH)
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] in {"capture_not_found", "not_found"}
    assert b"root:" not in r.content


def test_capture_routes_need_the_token(captured) -> None:
    client, _, _, _ = captured
    for url in ("/admin/captures", "/admin/captures/groups", "/admin/captures/" + "a" * 64):
        r = client.get(url)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_groups_cover_every_capture(captured) -> None:
    client, folder, _, _ = captured
    r = client.get("/admin/captures/groups", headers=AUTH)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert set(doc) == {"model_version", "groups", "ungrouped"}
    ids = [i for g in doc["groups"] for i in g["ids"]] + doc["ungrouped"]
    assert sorted(ids) == sorted(p.stem for p in folder.glob("*.json"))
    assert [g["group"] for g in doc["groups"]] == list(range(1, len(doc["groups"]) + 1))
    sizes = [g["size"] for g in doc["groups"]]
    assert sizes == sorted(sizes, reverse=True) and all(s >= 3 for s in sizes)
    assert len(doc["groups"]) >= 2  # 40 new digits of four kinds are not one blob


def _form(name: str, capture_ids: list[str]) -> list[tuple[str, tuple[None, str]]]:
    """Multipart text fields: the class name and capture ids (no file parts)."""
    return [("name", (None, name))] + [("capture", (None, i)) for i in capture_ids]


def test_enrolment_takes_capture_ids(captured) -> None:
    """Last in this module: it changes the serving model. Captured 6s become class "six"."""
    client, _, _, _ = captured
    items = client.get("/admin/captures", params={"limit": 1000}, headers=AUTH).json()["items"]
    sixes = [it["id"] for it in items if it["filename"].startswith("digit-6-")][:5]
    assert len(sixes) == 5
    for bad in ("f" * 64, "../" + sixes[0]):
        r = client.post("/admin/classes", files=_form("six", [sixes[0], bad]), headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "capture_not_found", r.text
    r = client.post("/admin/classes", files=_form("six", sixes), headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "six" and r.json()["examples"] == 5
    assert "six" in client.get("/v1/model").json()["class_names"]


def test_sampling_keeps_about_the_rate(tmp_path: Path) -> None:
    model, _ = serving_model(tmp_path)
    env = _env(model, tmp_path / "captures", OLTR_CAPTURE_SAMPLE_RATE="0.5")
    digits = mnist_digits(range(10), per_digit=4)
    with (
        running_service(env, tmp_path / "service.log") as service,
        httpx.Client(base_url=service.url, timeout=60) as client,
    ):
        for i in range(0, len(digits), 8):
            _post(client, digits[i : i + 8], **ALL_UNKNOWN)
        deadline = time.monotonic() + 20
        while _captured(client, "kept") + _captured(client, "sampled_out") < len(digits):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        kept, out = _captured(client, "kept"), _captured(client, "sampled_out")
        assert _captured(client, "failed") == 0
    assert kept + out == len(digits)
    assert 8 <= kept <= 32  # Binomial(40, 0.5): outside this range p < 1e-4
    assert len(list((tmp_path / "captures").glob("*.json"))) == kept


def test_an_unwritable_folder_never_fails_classify(tmp_path: Path) -> None:
    model, _ = serving_model(tmp_path)
    (tmp_path / "file").write_text("a file where the capture folder should be")
    env = _env(model, tmp_path / "file" / "captures")
    digits = mnist_digits(range(6, 10), per_digit=2)
    with (
        running_service(env, tmp_path / "service.log") as service,
        httpx.Client(base_url=service.url, timeout=60) as client,
    ):
        r = _post(client, digits, **ALL_UNKNOWN)
        assert all(p["unknown"] for p in r.json()["predictions"])
        _wait_for_results(client, {"kept": 0, "failed": len(digits)})
        listing = client.get("/admin/captures", headers=AUTH)
        assert listing.status_code == 503, listing.text
        assert listing.json()["error"]["code"] == "capture_unavailable"
        groups = client.get("/admin/captures/groups", headers=AUTH)
        assert groups.status_code == 200 and groups.json()["groups"] == []
        logs = service.logs()
    assert "capture folder" in logs and "not usable" in logs  # said at start-up
    assert logs.count("capture failed (ENOTDIR)") == 1  # then once per kind of failure
