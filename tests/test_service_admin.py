"""Admin API through a real uvicorn process: bearer auth, threshold, atomic reload."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from _service_fixtures import (
    CMY_CLASSES,
    build_standin,
    card_of,
    metric_value,
    mnist_digits,
    running_service,
    serving_model,
    solid,
    write_model,
)
from onnx import TensorProto

pytestmark = pytest.mark.slow

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def admin(tmp_path_factory):
    root = tmp_path_factory.mktemp("admin")
    path, _ = serving_model(root)
    models = {
        "second": write_model(root / "second" / "model.onnx", build_standin(classes=CMY_CLASSES)),
        "float_input": write_model(
            root / "float" / "model.onnx", build_standin(input_dtype=TensorProto.FLOAT)
        ),
        "no_card": write_model(root / "nocard" / "model.onnx", build_standin(with_card=False)),
    }
    garbage = root / "garbage.onnx"
    garbage.write_bytes(b"this is not an onnx file" * 100)
    models["garbage"] = garbage
    models["missing"] = root / "does-not-exist.onnx"
    env = {
        "OLTR_MODEL_PATH": str(path),
        "OLTR_ADMIN_TOKEN": TOKEN,
        "OLTR_WARMUP_RUNS": "1",
        "OLTR_MAX_BATCH_DELAY_MS": "10",
    }
    with (
        running_service(env, root / "service.log") as service,
        httpx.Client(base_url=service.url, timeout=30) as client,
    ):
        yield client, card_of(path), models, service


def _digit() -> dict:
    data, _ = mnist_digits([1])[0]
    return {"files": [("file", ("one.png", data, "image/png"))]}


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": f"Basic {TOKEN}"}, 401, "unauthorized"),
        ({"Authorization": "Bearer"}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-token-123"}, 403, "forbidden"),
    ],
)
def test_admin_needs_the_bearer_token(admin, headers, status, code):
    client, _, models, _ = admin
    before = client.get("/metrics").text
    for method, url, body in (
        ("PUT", "/admin/threshold", {"threshold": 1.0}),
        ("POST", "/admin/reload", {"path": str(models["second"])}),
    ):
        r = client.request(method, url, json=body, headers=headers)
        assert r.status_code == status and r.json()["error"]["code"] == code
    after = client.get("/metrics").text
    key = ("oltr_rejected_requests_total", {"reason": "unauthorized"})
    assert metric_value(after, *key) == metric_value(before, *key) + 2
    assert client.get("/v1/model").json()["unknown_score"]["threshold_source"] == "card"


def test_threshold_set_and_reset(admin):
    client, card, _, _ = admin
    r = client.put("/admin/threshold", json={"threshold": 1e9}, headers=AUTH)
    assert r.status_code == 200
    assert r.json() == {
        "unknown_score": card["unknown_score"]["name"],
        "threshold": 1e9,
        "threshold_source": "admin",
    }
    out = client.post("/classify", **_digit()).json()
    assert out["threshold_source"] == "admin" and out["predictions"][0]["unknown"] is True
    override = client.post("/classify", params={"threshold": -1e9}, **_digit()).json()
    assert override["threshold_source"] == "request"  # a request beats the admin value
    assert metric_value(client.get("/metrics").text, "oltr_unknown_threshold") == 1e9
    assert (
        client.put("/admin/threshold", json={"threshold": "high"}, headers=AUTH).status_code == 422
    )
    reset = client.put("/admin/threshold", json={"threshold": None}, headers=AUTH).json()
    assert reset["threshold_source"] == "card"
    assert reset["threshold"] == pytest.approx(card["threshold"])


@pytest.mark.parametrize(
    ("which", "fragment"),
    [
        ("missing", "not found"),
        ("garbage", "onnxruntime cannot load it"),
        ("float_input", "must be uint8"),
        ("no_card", "oltr.card"),
    ],
)
def test_bad_reload_keeps_the_old_model(admin, which, fragment):
    client, card, models, _ = admin
    r = client.post("/admin/reload", json={"path": str(models[which])}, headers=AUTH)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_model"
    assert fragment in error["message"] and str(models[which]) in error["message"]
    assert client.get("/v1/model").json()["version"] == card["version"]
    served = client.post("/classify", **_digit())
    assert served.status_code == 200 and served.json()["model_version"] == card["version"]


def test_reload_swaps_atomically_under_traffic(admin):
    client, card, models, _ = admin
    second = card_of(models["second"])
    client.put("/admin/threshold", json={"threshold": 123.0}, headers=AUTH)
    yellow = solid((255, 255, 0))

    async def traffic_and_reload() -> tuple[list[httpx.Response], httpx.Response]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as ac:
            posts = [
                ac.post("/classify", content=yellow, headers={"Content-Type": "image/png"})
                for _ in range(30)
            ]
            reload = ac.post("/admin/reload", json={"path": str(models["second"])}, headers=AUTH)
            *responses, reloaded = await asyncio.gather(*posts[:15], *posts[15:], reload)
        return responses, reloaded

    responses, reloaded = asyncio.run(traffic_and_reload())
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["previous_version"] == card["version"]
    assert reloaded.json()["version"] == second["version"]
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["model_version"] for r in responses} <= {card["version"], second["version"]}

    after = client.post("/classify", content=yellow, headers={"Content-Type": "image/png"}).json()
    assert after["model_version"] == second["version"]
    assert after["predictions"][0]["label"] == "yellow"  # the stand-in's CMY classes
    assert after["threshold_source"] == "card"  # the admin override ends with the old model
    info = client.get("/v1/model").json()
    assert info["class_names"] == ["cyan", "magenta", "yellow"]
    text = client.get("/metrics").text
    assert metric_value(text, "oltr_model_info", {"version": second["version"]}) == 1
    assert metric_value(text, "oltr_model_info", {"version": card["version"]}) == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"threshold": -1}',  # below any max_softmax / reachability / combined score
        b'{"threshold": -1e308}',
        b'{"threshold": 1e999}',  # json.loads reads it as inf
        b'{"threshold": true}',
        b'{"threshold": "0.5"}',
    ],
)
def test_threshold_must_be_a_finite_json_number_in_the_score_range(admin, body):
    client, card, _, _ = admin
    headers = {**AUTH, "Content-Type": "application/json"}
    r = client.put("/admin/threshold", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "validation_error"
    info = client.get("/v1/model").json()["unknown_score"]
    assert info["threshold_source"] == "card"  # nothing changed
    ok = client.put("/admin/threshold", content=b'{"threshold": 0.5}', headers=headers)
    assert ok.status_code == 200 and ok.json()["threshold"] == 0.5
    client.put("/admin/threshold", json={"threshold": None}, headers=AUTH)


@pytest.mark.parametrize(
    "path",
    ["a" * 300, "/tmp/" + "b" * 300 + "/model.onnx", "c" * 5000, "nul\x00byte", "/dev/null/x"],
    ids=["long-name", "long-component", "over-4096", "nul", "not-a-dir"],
)
def test_reload_path_of_any_length_or_content_is_4xx(admin, path):
    client, _, _, _ = admin
    serving = client.get("/v1/model").json()["version"]
    r = client.post("/admin/reload", json={"path": path}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("invalid_model", "validation_error")
    assert client.get("/v1/model").json()["version"] == serving


def test_user_input_cannot_forge_log_lines(admin):
    client, _, _, service = admin
    forged = "x.onnx\n2026-01-01 00:00:00,000 ERROR oltr.service [-] FORGED"
    r = client.post("/admin/reload", json={"path": forged}, headers=AUTH)
    assert r.status_code == 422
    assert client.get("/nothing%0AFORGED-PATH").status_code == 404
    lines = service.logs().splitlines()
    assert not any(line.startswith("2026-01-01") or "FORGED" in line[:40] for line in lines)
    assert any("x.onnx\\n2026-01-01" in line for line in lines)  # escaped, on its own line


def test_secrets_in_query_strings_never_reach_the_log(admin):
    client, _, _, service = admin
    r = client.put("/admin/threshold", params={"token": TOKEN}, json={"threshold": 0.5})
    assert r.status_code == 401  # tokens count only in the Authorization header
    r = client.post("/classify", params={"api_key": "query-secret-42", "top_k": 2}, **_digit())
    assert r.status_code == 200
    logs = service.logs()
    assert TOKEN not in logs and "query-secret-42" not in logs
    assert "token=***" in logs and "api_key=***&top_k=2" in logs


def test_capture_routes_say_capture_is_off(admin):
    """Without OLTR_CAPTURE_DIR nothing is kept and the capture routes answer 404."""
    client, _, _, service = admin
    r = client.post("/classify", params={"threshold": 1000.0}, **_digit())
    assert r.status_code == 200 and r.json()["predictions"][0]["unknown"]
    for url in ("/admin/captures", "/admin/captures/groups", "/admin/captures/" + "a" * 64):
        r = client.get(url, headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "capture_disabled", url
    text = client.get("/metrics").text
    assert metric_value(text, "oltr_captured_images_total") == 0
    assert "capturing unknown images" not in service.logs()
