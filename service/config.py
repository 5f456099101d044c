"""Service settings: one typed class read from ``OLTR_*`` environment variables.

Every field is an environment variable with the ``OLTR_`` prefix (``model_path`` is
``OLTR_MODEL_PATH``). Invalid values stop start-up with a message that names the variable
(:func:`load_settings`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.card import ScoreName

ENV_PREFIX = "OLTR_"
KNOWN_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class SettingsError(ValueError):
    """A setting is invalid; the message names the environment variable."""


class Settings(BaseSettings):
    """Everything the service can be told; defaults suit a laptop on loopback."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    model_path: Path = Path("models/default/model.onnx")
    """The ONNX artifact (model card in its metadata, see the export contract)."""
    model_name: str = Field("oltr", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    """The model's name in the Open Inference Protocol routes (``/v2/models/{name}``); its
    version there is the card's version."""
    threshold: float | None = None
    """Unknown threshold override; default: the card's calibrated threshold."""
    unknown_score: ScoreName | None = None
    """Score compared with the threshold; default: the card's ``unknown_score.name``."""
    providers: str = "auto"
    """auto (CUDA when the session really gets it, else CPU), cpu, cuda, or a comma-separated
    list of onnxruntime provider names in priority order."""
    intra_op_threads: int = Field(0, ge=0)
    """onnxruntime intra-op threads; 0 lets onnxruntime decide."""
    inter_op_threads: int = Field(0, ge=0)
    preprocess_threads: int = Field(0, ge=0)
    """Threads that decode and resize images off the event loop; 0 means the CPU count."""
    max_batch_size: int = Field(8, ge=1, le=4096)
    """Largest inference batch. 8 suits CPUs (docs/BENCHMARKS.md: bigger CPU batches only add
    latency); raise it on a GPU."""
    max_batch_delay_ms: float = Field(5.0, ge=0, le=10_000)
    """How long the first image of a batch waits for others before the batch runs."""
    max_queue: int = Field(256, ge=1)
    """Images waiting for inference; beyond it requests get 503 with Retry-After."""
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body (all files together), enforced while reading."""
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Largest width x height accepted, checked from the header before decoding."""
    max_files: int = Field(16, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    """Longest an image may wait for its inference result (504 after that)."""
    warmup_runs: int = Field(2, ge=1)
    warmup_min_s: float = Field(0.0, ge=0)
    """Keep running warm-up batches for at least this long before reporting ready."""
    admin_token: SecretStr | None = None
    """Bearer token for /admin/*; when unset the admin routes do not exist."""
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    shutdown_timeout_s: float = Field(30.0, gt=0)
    """``python -m service``: how long SIGTERM waits for in-flight requests."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    json_logs: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("admin_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 8:
            raise ValueError("must be at least 8 non-blank characters when set")
        return value

    @field_validator("providers")
    @classmethod
    def _providers_known(cls, value: str) -> str:
        provider_list(value)
        return value

    @field_validator("threshold")
    @classmethod
    def _finite_threshold(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> Settings:
        if self.max_queue < self.max_files:
            raise ValueError(
                f"{ENV_PREFIX}MAX_QUEUE ({self.max_queue}) must be >= {ENV_PREFIX}MAX_FILES "
                f"({self.max_files}), or a full request could never be queued"
            )
        return self

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0


def provider_list(value: str) -> list[str] | None:
    """Resolve the providers setting: None for auto, else onnxruntime provider names."""
    text = value.strip()
    if text.lower() == "auto":
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("must be 'auto', 'cpu', 'cuda' or a comma-separated list of providers")
    resolved = [KNOWN_PROVIDERS.get(n.lower(), n) for n in names]
    bad = [n for n in resolved if not n.endswith("ExecutionProvider")]
    if bad:
        raise ValueError(
            f"unknown execution provider(s) {bad}; use names like CPUExecutionProvider"
        )
    return resolved


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"])
            name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
            shown = "" if field == "admin_token" else f" (got {e.get('input')!r})"
            problems.append(f"{name}: {e['msg']}{shown}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from err
