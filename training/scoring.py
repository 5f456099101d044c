"""A model's open-set scores on the evaluation sets, computed with the contract's functions.

The model's outputs are taken under the ONNX artifact's names
(:meth:`training.models.OLTROutput.artifact_outputs`) and scored by
:func:`oltr_contract.scores.compute_score`, the function the service answers with; the
``combined`` score is fitted on the calibration set and applied with
:func:`oltr_contract.scores.combined`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from oltr_contract.scores import COMBINED, COMBINED_PARTS, combined
from training.engine import predict
from training.metrics import ScoreCollector, ScoredSet, fit_combined
from training.models import OLTRNet
from training.run_data import RunData

log = logging.getLogger(__name__)

OPEN_SET_NAME = "open"
"""How the config's open_test set is named in reports."""
FALLBACK_SCORE = "max_softmax"
"""The decision score of a model that lacks the configured one (a plain model: no reachability)."""


def scored_outputs(outputs: Mapping[str, Any]) -> ScoredSet:
    """Argmax predictions and every available score of model ``outputs`` (artifact names, plus
    ``labels``; -1 labels an open image)."""
    collector = ScoreCollector()
    collector.update(outputs, outputs["labels"])
    return collector.compute()


def collect(model: OLTRNet, loader: DataLoader, device: torch.device, desc: str) -> ScoredSet:
    """Argmax predictions and every available score of ``model`` over ``loader``."""
    return scored_outputs(predict(model, loader, device, desc=desc))


def score_sets(model: OLTRNet, data: RunData, device: torch.device) -> dict[str, ScoredSet]:
    """Scored test, validation and open sets (validation falls back to the training images)."""
    names = [n for n in ("test", "val", "open_val", "open_test") if data.has(n)]
    if "val" not in names:
        log.warning("no validation split: calibrating the threshold on the training images")
        names.append("train_eval")
    return {name: collect(model, data.loader(name), device, name) for name in names}


def apply_combined(sets: Mapping[str, ScoredSet], params: Mapping[str, float]) -> None:
    """Add the ``combined`` score with divisors ``params`` to every set."""
    for scored in sets.values():
        scored.scores[COMBINED] = combined(scored.scores, params)


def add_combined(
    sets: Mapping[str, ScoredSet], calib: ScoredSet, target_accept: float
) -> dict[str, float] | None:
    """Fit the combined score on ``calib`` and add it to every set (needs reachability)."""
    if not all(part in calib.scores for part in COMBINED_PARTS):
        return None
    params = fit_combined(calib.scores, target_accept)
    apply_combined(sets, params)
    return params


def decision_score(configured: str, available: Mapping[str, np.ndarray], model: str) -> str:
    """The configured unknown score, or :data:`FALLBACK_SCORE` (logged) when ``model`` lacks it."""
    if configured in available:
        return configured
    log.info(
        "%s has no %r score (it has %s): its open-set decision uses %r instead",
        model,
        configured,
        ", ".join(available),
        FALLBACK_SCORE,
    )
    return FALLBACK_SCORE
