"""Request and response models; every field's meaning and range shows in the OpenAPI schema."""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictFloat, field_validator

from oltr_contract.scores import SCORE_NAMES, ScoreName, score_definition

ThresholdSource = Literal["request", "admin", "settings", "card"]
"""Where a threshold came from (precedence in :mod:`service.open_set`)."""


class ServiceStatus(StrEnum):
    """The service's lifecycle state (``ServiceState.status``; ``/readyz`` reports it)."""

    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    WARMUP_FAILED = "warmup_failed"
    SHUTTING_DOWN = "shutting_down"


class TopKEntry(BaseModel):
    label: str = Field(description="Class name.")
    class_index: int = Field(ge=0, description="Index of the class in the model's class list.")
    probability: float = Field(ge=0, le=1, description="Softmax probability of this class.")


class Prediction(BaseModel):
    """The result for one image."""

    filename: str | None = Field(
        description="Name of the uploaded file (multipart), or null for a raw image body."
    )
    label: str = Field(
        description="Most likely known class. Reported even when `unknown` is true: it is "
        "then the nearest known class, not an accepted answer."
    )
    class_index: int = Field(ge=0, description="Index of `label` in the model's class list.")
    confidence: float = Field(
        ge=0, le=1, description="Softmax probability of `label` (0..1; max softmax)."
    )
    reachability: float = Field(
        ge=0,
        description="OLTR reachability s_r / d_min: s_r (the card's reach scale) divided by the "
        "distance from the image's feature to the nearest class centroid. 0..inf; higher means "
        "closer to a known class (more known).",
    )
    distance: float = Field(
        ge=0, description="d_min: L2 distance from the feature to the nearest class centroid."
    )
    score: float = Field(
        description="Value of the configured unknown score (see `unknown_score` in the "
        "response); higher means more known. "
        + "; ".join(f"{name}: {score_definition(name)}" for name in SCORE_NAMES)
        + " (params: the card's unknown_score.params)."
    )
    unknown: bool = Field(
        description="True when `score` < `threshold`: the image is likely of no known class "
        "(open set)."
    )
    top_k: list[TopKEntry] = Field(
        description="The k most probable known classes, most probable first."
    )


class ClassifyResponse(BaseModel):
    model_version: str = Field(description="Version of the model that answered (card.version).")
    unknown_score: ScoreName = Field(
        description="Score compared with the threshold to decide `unknown`."
    )
    threshold: float = Field(description="Threshold used: score < threshold means unknown.")
    threshold_source: ThresholdSource = Field(
        description="Where the threshold came from: this request's query, the admin API, "
        "the OLTR_THRESHOLD setting, or the model card's calibrated value."
    )
    predictions: list[Prediction] = Field(description="One result per image, in upload order.")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code, e.g. invalid_image.")
    message: str = Field(description="Human-readable explanation.")
    request_id: str = Field(description="Id of the request, also in the logs and X-Request-ID.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = Field(description="Always ok: the process answers HTTP.")


class Readiness(BaseModel):
    ready: bool = Field(description="True once the model is loaded and warmed up.")
    status: ServiceStatus = Field(
        description="loading, warming_up, ready, warmup_failed (stays not ready) or shutting_down."
    )
    model_version: str | None = Field(description="Version being served, if loaded.")


class ProviderInfo(BaseModel):
    setting: str = Field(description="The OLTR_PROVIDERS setting (auto, cpu, cuda or a list).")
    requested: list[str] = Field(description="Providers asked of onnxruntime, in priority order.")
    active: list[str] = Field(description="Providers the session really uses, in priority order.")
    fallback: bool = Field(description="True when CUDA was requested but the session runs on CPU.")


class UnknownScoreInfo(BaseModel):
    name: ScoreName = Field(
        description="Score used for the unknown decision (higher = more known)."
    )
    definition: str = Field(description="How the score is computed (from the model card).")
    threshold: float = Field(description="Threshold in use (without per-request overrides).")
    threshold_source: ThresholdSource = Field(description="Where `threshold` comes from.")
    card_threshold: float = Field(description="Threshold calibrated at export (model card).")
    params: dict[str, float] | None = Field(
        default=None,
        description="combined score only: the divisor of each part (its calibrated threshold).",
    )


class ModelInfo(BaseModel):
    name: str = Field(
        description="Model name in the Open Inference Protocol routes (/v2/models/{name}; "
        "OLTR_MODEL_NAME)."
    )
    version: str = Field(description="Model version: sha256 prefix of the model bytes.")
    path: str = Field(description="Model file being served.")
    created: str | None = Field(description="When the model was exported (ISO 8601 UTC).")
    class_names: list[str] = Field(description="Known classes, in class_index order.")
    input_size: int = Field(description="Side C of the square crop the model sees.")
    preprocess: dict[str, Any] = Field(description="Resize / crop / interpolation (model card).")
    unknown_score: UnknownScoreInfo
    provider: str = Field(description="Execution provider actually running the model.")
    providers: ProviderInfo
    max_batch_size: int = Field(description="Largest inference batch (OLTR_MAX_BATCH_SIZE).")
    card: dict[str, Any] = Field(description="The full model card.")


class ReloadRequest(BaseModel):
    path: str = Field(
        min_length=1, max_length=4096, description="Model file on the server to load and serve."
    )


class ReloadResponse(BaseModel):
    previous_version: str = Field(description="Version that was serving before the reload.")
    version: str = Field(description="Version serving now.")
    path: str = Field(description="Model file serving now.")
    provider: str = Field(description="Execution provider of the new session.")


class ThresholdRequest(BaseModel):
    threshold: StrictFloat | None = Field(
        description="New threshold for the unknown score, a JSON number in the score's range "
        "(max_softmax 0..1; reachability, combined >= 0); null restores the default "
        "(OLTR_THRESHOLD if set, else the model card's). Reset by a model reload."
    )

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("threshold must be a finite number")
        return value


class ThresholdResponse(BaseModel):
    unknown_score: ScoreName = Field(description="Score the threshold applies to.")
    threshold: float = Field(description="Threshold now in use.")
    threshold_source: ThresholdSource = Field(description="Where it comes from.")


class ClassInfo(BaseModel):
    name: str
    index: int = Field(description="Column of the class in logits and probabilities.")
    enrolled: bool = Field(description="Added by enrolment (removable), not trained.")
    examples: int | None = Field(description="Enrolment images (null for trained classes).")


class ClassesResponse(BaseModel):
    model_version: str
    classes: list[ClassInfo]


class EnrolResponse(BaseModel):
    name: str = Field(description="The class added or removed.")
    version: str = Field(description="Version serving now (the new model).")
    previous_version: str = Field(description="Version the new model was derived from.")
    path: str = Field(description="Model file serving now, in OLTR_ENROL_DIR.")
    examples: int | None = Field(None, description="Images the class was learnt from.")


class CaptureInfo(BaseModel):
    """A capture's sidecar (``OLTR_CAPTURE_DIR/<id>.json``)."""

    id: str = Field(description="sha256 of the image bytes; the image is GET /admin/captures/{id}.")
    received: str = Field(description="When it was classified (last time, ISO 8601 UTC).")
    filename: str | None = Field(description="Uploaded file name (null for a raw body).")
    content_type: str | None = Field(description="Content-Type the client declared.")
    label: str = Field(description="Most probable known class.")
    confidence: float = Field(description="Its softmax probability.")
    reachability: float = Field(description="OLTR reachability (higher = more known).")
    score: float = Field(description="The unknown score's value.")
    unknown_score: ScoreName = Field(description="Which score decided `unknown`.")
    threshold: float = Field(description="Threshold it was compared with.")
    nearest_class: str = Field(description="Class whose centroid is nearest the image.")
    model_version: str = Field(description="Model that flagged it unknown.")
    request_id: str = Field(description="Request that sent it (X-Request-ID, logs).")


class CaptureList(BaseModel):
    total: int = Field(description="Captures in the folder.")
    items: list[CaptureInfo] = Field(description="This page, newest first.")


class CaptureGroup(BaseModel):
    group: int = Field(ge=1, description="Group number, 1 = the biggest.")
    size: int = Field(ge=1, description="Images in the group.")
    ids: list[str] = Field(description="Capture ids of its images.")


class CaptureGroups(BaseModel):
    model_version: str = Field(description="Model whose embedding grouped the captures.")
    groups: list[CaptureGroup] = Field(description="Candidate new classes, biggest first.")
    ungrouped: list[str] = Field(description="Capture ids in no group big enough.")
