"""Service settings: one typed class read from ``OLTR_*`` environment variables.

Every field is an environment variable with the ``OLTR_`` prefix (``model_path`` is
``OLTR_MODEL_PATH``). Invalid values stop start-up with a message that names the variable
(:func:`load_settings`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from oltr_contract.scores import ScoreName

ENV_PREFIX = "OLTR_"
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
"""The service's per-image pixel limit, also used by the offline tools (discover, enrol, the
export's imprint reference) that decode images as the service does."""
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
    """Threads that decode and resize images off the event loop; 0 means
    min(CPU count, 4): memory in use while decoding must not grow with the host's cores."""
    max_batch_size: int = Field(8, ge=1, le=4096)
    """Largest inference batch. 8 suits CPUs (docs/BENCHMARKS.md: bigger CPU batches only add
    latency); raise it on a GPU."""
    max_batch_delay_ms: float = Field(5.0, ge=0, le=10_000)
    """How long the first image of a batch waits for others before the batch runs."""
    max_queue: int = Field(256, ge=1)
    """Images waiting for inference; beyond it requests get 503 with Retry-After."""
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body (all files together), enforced while reading."""
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, ge=1)
    """Largest width x height accepted, checked from the header before decoding."""
    max_files: int = Field(16, ge=1)
    max_request_pixels: int = Field(48_000_000, ge=1)
    """Largest sum of width x height over the images of one request (413), from the headers."""
    max_decode_pixels: int = Field(96_000_000, ge=1)
    """Decode budget: pixels admitted for decoding across the service at once (decoding or
    waiting for a decode thread). A request that does not fit gets 503 with Retry-After at
    once, before any of its images is decoded."""
    request_timeout_s: float = Field(30.0, gt=0)
    """Longest a request may take from its body being read to its answer, decoding and
    inference included (504 after that)."""
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024 * 1024)
    """Largest request head (request line and headers together); over it: 431."""
    max_headers: int = Field(100, ge=8, le=10_000)
    """Most header fields in one request; over it: 431."""
    header_timeout_s: float = Field(10.0, gt=0)
    """A connection must deliver a complete request head within this long (else 408, closed)."""
    read_timeout_s: float = Field(30.0, gt=0)
    """Longest pause while a request body is being received (else 408, connection closed)."""
    keepalive_timeout_s: float = Field(5.0, gt=0)
    """An idle keep-alive connection is closed after this long."""
    max_requests_per_connection: int = Field(1000, ge=1)
    """Requests served on one keep-alive connection before the service closes it."""
    warmup_runs: int = Field(2, ge=1)
    warmup_min_s: float = Field(0.0, ge=0)
    """Keep running warm-up batches for at least this long before reporting ready."""
    capture_dir: Path | None = None
    """Keep the images flagged unknown in this folder (off when unset: they are user data):
    ``<sha256>.<ext>`` (the bytes as sent) plus a ``<sha256>.json`` sidecar, written in the
    background; a folder that cannot be written never fails /classify (logged, counted as
    ``oltr_captured_images_total{result="failed"}``). One folder per service process."""
    capture_sample_rate: float = Field(1.0, gt=0, le=1)
    """Share of the unknown images kept (0 < r <= 1), drawn independently per image."""
    capture_max_bytes: int = Field(1024**3, ge=1024 * 1024)
    """Size cap of the capture folder (images + sidecars). Over it the OLDEST captures are
    deleted (``oltr_capture_evicted_images_total``): the newest unknowns matter most when
    looking for what is new, and capture never stops silently."""
    admin_token: SecretStr | None = None
    """Bearer token for /admin/*; when unset the admin routes do not exist."""
    enrol_dir: Path | None = None
    """Folder for enrolled model versions (``<version>/model.onnx``, ``LATEST``); with the admin
    token set, ``/admin/classes`` can add and remove classes. Unset: enrolment is off."""
    enrol_max_images: int = Field(50, ge=1, le=1000)
    """Most example images one enrolment takes."""
    serve_latest_enrolled: bool = False
    """Start-up serves the version ``enrol_dir/LATEST`` names (when there is one) instead of
    ``model_path``: a restart keeps the classes enrolled before it."""
    ui: bool = False
    """Serve the web page at /ui/ (try images, review captured unknowns, enrol); its admin
    parts send the token the user types into the page, kept in that tab's sessionStorage."""
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
    def _limits_hold_a_request(self) -> Settings:
        _at_least(self, "max_queue", "max_files", "else a full request could never be queued")
        _at_least(
            self, "max_decode_pixels", "max_request_pixels", "else a big request could never run"
        )
        return self

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0


def _at_least(settings: Settings, big: str, small: str, why: str) -> None:
    """Raise unless setting ``big`` >= setting ``small`` (both named as variables)."""
    if getattr(settings, big) < getattr(settings, small):
        raise ValueError(
            f"{ENV_PREFIX}{big.upper()} ({getattr(settings, big)}) must be >= "
            f"{ENV_PREFIX}{small.upper()} ({getattr(settings, small)}): {why}"
        )


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


def load_settings(**overrides: Any) -> Settings:
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
