"""Settings: env parsing, errors that name the variable, start-up refusal, cheap import."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _service_fixtures import REPO

from service.config import Settings, SettingsError, load_settings


def _clean_env(monkeypatch):
    for name in [k for k in os.environ if k.startswith("OLTR_")]:
        monkeypatch.delenv(name)


def test_defaults_and_env(monkeypatch):
    _clean_env(monkeypatch)
    s = load_settings()
    assert str(s.model_path) == "models/default/model.onnx" and s.port == 8000
    assert s.admin_token is None and s.threshold is None and s.providers == "auto"
    monkeypatch.setenv("OLTR_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("OLTR_MAX_BATCH_DELAY_MS", "2.5")
    monkeypatch.setenv("OLTR_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("OLTR_JSON_LOGS", "true")
    s = load_settings()
    assert (s.max_batch_size, s.max_batch_delay_s, s.log_level, s.json_logs) == (
        4,
        0.0025,
        "debug",
        True,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OLTR_MAX_BATCH_SIZE": "0"}, "OLTR_MAX_BATCH_SIZE"),
        ({"OLTR_PORT": "http"}, "OLTR_PORT"),
        ({"OLTR_THRESHOLD": "nan"}, "OLTR_THRESHOLD"),
        ({"OLTR_UNKNOWN_SCORE": "odin"}, "OLTR_UNKNOWN_SCORE"),
        ({"OLTR_PROVIDERS": "gpu-please"}, "OLTR_PROVIDERS"),
        ({"OLTR_LOG_LEVEL": "loud"}, "OLTR_LOG_LEVEL"),
        ({"OLTR_MAX_QUEUE": "2", "OLTR_MAX_FILES": "8"}, "OLTR_MAX_QUEUE"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch, env, named):
    _clean_env(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_short_admin_token_refused_without_echoing_it():
    with pytest.raises(SettingsError, match="OLTR_ADMIN_TOKEN") as info:
        load_settings(admin_token="abc")
    assert "abc" not in str(info.value)
    assert Settings(admin_token="long-enough-token").admin_token.get_secret_value()


def _run(code_or_cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OLTR_")}
    return subprocess.run(
        [sys.executable, *code_or_cmd],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_m_service_refuses_invalid_settings():
    done = _run(["-m", "service"], {"OLTR_MAX_FILES": "-1"})
    assert done.returncode == 2
    assert "OLTR_MAX_FILES" in done.stderr and "greater than or equal to 1" in done.stderr


def test_uvicorn_entry_refuses_invalid_settings():
    done = _run(["-m", "uvicorn", "service.app:app", "--port", "1"], {"OLTR_MAX_QUEUE": "zero"})
    assert done.returncode != 0 and "OLTR_MAX_QUEUE" in done.stderr


def test_import_is_cheap_and_torch_free():
    code = (
        "import sys, service.app, service.__main__\n"
        "assert service.app._app is None, 'app built at import'\n"
        "app = service.app.app\n"  # built on access from the env, model not loaded yet
        "assert app.state.settings.model_path.name == 'missing.onnx'\n"
        "assert not hasattr(app.state, 'service'), 'model state created before lifespan'\n"
        "assert 'torch' not in sys.modules, 'the service imported torch'\n"
        "print('ok')\n"
    )
    done = _run(["-c", code], {"OLTR_MODEL_PATH": "/nowhere/missing.onnx"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
