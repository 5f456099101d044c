"""The model card (export contract): parsed from ONNX metadata key ``oltr.card``.

Only the fields the service needs are typed; the rest (evaluation, training_config, ...) are
kept as they are and shown by ``GET /v1/model``.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oltr_contract.artifact import CARD_KEY, CARD_SCHEMA_VERSION, INPUT_LAYOUT
from oltr_contract.scores import COMBINED, COMBINED_PARTS, ScoreName
from service.errors import describe_errors

Interpolation = Literal["bilinear", "bicubic", "nearest"]


class PreprocessSpec(BaseModel):
    """Resize the shorter side to ``resize_shorter``, centre-crop ``crop`` (torchvision rules)."""

    model_config = ConfigDict(extra="allow")
    resize_shorter: int = Field(ge=1)
    crop: int = Field(ge=1)
    interpolation: Interpolation = "bilinear"
    layout: str = INPUT_LAYOUT

    @model_validator(mode="after")
    def _crop_fits(self) -> PreprocessSpec:
        if self.crop > self.resize_shorter:
            raise ValueError(f"crop ({self.crop}) exceeds resize_shorter ({self.resize_shorter})")
        return self


class UnknownScoreSpec(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: ScoreName
    definition: str = ""
    higher_is_known: bool = True
    params: dict[str, float] | None = None
    """combined only: the divisor of each part (its own calibrated threshold)."""

    @model_validator(mode="after")
    def _combined_has_params(self) -> UnknownScoreSpec:
        if self.name == COMBINED:
            params = self.params or {}
            bad = [p for p in COMBINED_PARTS if not params.get(p, 0) > 0]
            if bad:
                raise ValueError(f"combined score needs positive params for {bad}")
        return self


class ModelCard(BaseModel):
    """The card fields the service relies on (see the ONNX artifact contract)."""

    model_config = ConfigDict(extra="allow")
    schema_version: int = Field(CARD_SCHEMA_VERSION, ge=1, le=CARD_SCHEMA_VERSION)
    """Card layout version (oltr_contract.artifact); a card without one is version 1, a newer
    one than this service knows is refused."""
    version: str = Field(min_length=1)
    created: str | None = None
    class_names: list[str] = Field(min_length=1)
    input_size: int = Field(ge=1)
    preprocess: PreprocessSpec
    unknown_score: UnknownScoreSpec
    threshold: float
    calibration: dict[str, Any] | None = None
    train_counts: list[int] | None = None
    shot_groups: list[str] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ModelCard:
        if self.preprocess.crop != self.input_size:
            raise ValueError(
                f"preprocess.crop ({self.preprocess.crop}) != input_size ({self.input_size})"
            )
        if not self.unknown_score.higher_is_known:
            raise ValueError("unknown_score.higher_is_known must be true (project sign convention)")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names has duplicates")
        return self


def parse_card(text: str | None, source: str) -> ModelCard:
    """Parse card JSON; ValueError names the source file and the offending key."""
    if text is None:
        raise ValueError(f"{source}: no model card (metadata key {CARD_KEY!r} is missing)")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: metadata {CARD_KEY!r} is not valid JSON: {err}") from err
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as err:
        problems = describe_errors(err.errors(), root="<card>")
        raise ValueError(f"{source}: invalid model card: {problems}") from err
