"""The service's open-set policy: which score, which threshold (and where it came from), and the
unknown decision, in one place. The scores and the rule are :mod:`oltr_contract.scores`, the
same functions training calibrated the model with.

Precedence of the threshold: this request > admin API > ``OLTR_THRESHOLD`` > the model card.
The score: ``OLTR_UNKNOWN_SCORE`` > the card's ``unknown_score.name``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from oltr_contract.scores import COMBINED, ScoreName, compute_score, is_known, reads
from oltr_contract.scores import score_definition as contract_definition
from service.card import ModelCard
from service.config import Settings
from service.errors import ModelLoadError
from service.schemas import ThresholdSource


@dataclass(frozen=True)
class OpenSetDecision:
    """Per image: the score and whether it is unknown (``score < threshold`` or NaN)."""

    scores: npt.NDArray[np.float64]
    unknown: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class OpenSetPolicy:
    """How one model's answers are decided known or unknown."""

    score: ScoreName
    params: dict[str, float] | None
    """The combined score's divisors (card ``unknown_score.params``); None for other scores."""
    threshold: float
    source: ThresholdSource
    definition: str

    def decide(self, rows: Sequence[Mapping[str, np.ndarray]]) -> OpenSetDecision:
        """The decision for the images whose model outputs are ``rows`` (one dict per image)."""
        outputs = {name: np.stack([row[name] for row in rows]) for name in reads(self.score)}
        scores = compute_score(self.score, outputs, self.params)
        return OpenSetDecision(scores, ~is_known(scores, self.threshold))


def policy_for(
    settings: Settings,
    card: ModelCard,
    *,
    admin_threshold: float | None = None,
    request_threshold: float | None = None,
) -> OpenSetPolicy:
    """The policy for a model with ``card`` under ``settings`` and the given overrides."""
    name: ScoreName = settings.unknown_score or card.unknown_score.name
    threshold, source = _threshold(settings, card, admin_threshold, request_threshold)
    from_card = name == card.unknown_score.name and card.unknown_score.definition
    return OpenSetPolicy(
        score=name,
        params=card.unknown_score.params if name == COMBINED else None,
        threshold=threshold,
        source=source,
        definition=card.unknown_score.definition if from_card else contract_definition(name),
    )


def _threshold(
    settings: Settings, card: ModelCard, admin: float | None, request: float | None
) -> tuple[float, ThresholdSource]:
    if request is not None:
        return request, "request"
    if admin is not None:
        return admin, "admin"
    if settings.threshold is not None:
        return settings.threshold, "settings"
    return card.threshold, "card"


def check_policy(settings: Settings, card: ModelCard, path: object) -> None:
    """ModelLoadError when ``settings`` ask for a score the model at ``path`` cannot serve."""
    wanted, calibrated = settings.unknown_score, card.unknown_score.name
    if wanted == COMBINED and calibrated != COMBINED:
        raise ModelLoadError(
            f"OLTR_UNKNOWN_SCORE=combined but the card of {path} has no combined "
            f"score parameters (it calibrates {calibrated!r})"
        )
    if wanted and wanted != calibrated and settings.threshold is None:
        raise ModelLoadError(
            f"OLTR_UNKNOWN_SCORE={wanted} but the card of {path} calibrates "
            f"{calibrated!r}; its threshold does not apply: set OLTR_THRESHOLD too"
        )
