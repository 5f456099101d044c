"""Open-set scores: one interface, one sign convention.

Sign convention (everywhere in this project): HIGHER = MORE KNOWN. An image is accepted as a
known class when ``score >= threshold`` and reported as unknown when ``score < threshold``.

Scores are pure functions of numpy arrays (torch CPU tensors convert through ``np.asarray``):

- ``reachability``: the model's ``reach = s_r / d_min`` (method notes section 3), passed through.
- ``max_softmax``: the largest softmax probability (the official OLTR decision, threshold 0.1).
- ``energy``: ``T * logsumexp(logits / T)``, the negative free energy (Liu et al., NeurIPS 2020).
- ``combined``: ``min(max_softmax / t_msp, reachability / t_reach)``, each part divided by the
  threshold that alone accepts the target share of known validation images. Reachability
  catches far novelty (photos: AUROC 0.99 on the default model), max softmax near novelty
  (unseen digits: 0.89, where reachability is 0.24); docs/BENCHMARKS.md has the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

ScoreName = Literal["reachability", "max_softmax", "energy"]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(x))) without overflow: m + log(sum(exp(x - m)))."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # all -inf rows give -inf instead of nan
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer there
        return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def _as_logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"logits must be [N, K], got shape {x.shape}")
    return x


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """Largest softmax probability per row of ``logits`` [N, K] -> [N] in (0, 1]."""
    x = _as_logits(logits)
    # max_k softmax_k = exp(max_k x_k - logsumexp(x)), exact and stable.
    return np.exp(np.max(x, axis=-1) - _logsumexp(x))


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy ``T * logsumexp(logits / T)`` per row of ``logits`` [N, K] -> [N]."""
    if temperature <= 0:
        raise ValueError(f"energy temperature must be > 0, got {temperature}")
    return temperature * _logsumexp(_as_logits(logits) / temperature)


def reachability(reach: np.ndarray) -> np.ndarray:
    """The model's reachability ``s_r / d_min`` [N], returned as float64."""
    r = np.asarray(reach, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"reach must be [N], got shape {r.shape}")
    return r


@dataclass(frozen=True)
class Score:
    """An open-set score: which model output it reads and how it is computed."""

    name: ScoreName
    source: Literal["logits", "reach"]
    fn: Callable[[np.ndarray], np.ndarray]
    definition: str


SCORES: dict[str, Score] = {
    s.name: s
    for s in (
        Score(
            "reachability",
            "reach",
            reachability,
            "reach = s_r / d_min, d_min = L2 distance of the direct feature to the nearest "
            "class centroid; higher is more known",
        ),
        Score(
            "max_softmax",
            "logits",
            max_softmax,
            "max_k softmax(logits)_k; higher is more known",
        ),
        Score(
            "energy",
            "logits",
            energy,
            "T * logsumexp(logits / T) with T = 1 (negative free energy); higher is more known",
        ),
    )
}
SCORE_NAMES: tuple[str, ...] = tuple(SCORES)
"""The scores computed from one model output."""

COMBINED = "combined"
COMBINED_PARTS: tuple[str, ...] = ("max_softmax", "reachability")
COMBINED_DEFINITION = (
    "min over (max_softmax, reachability) of score / params[score], params[score] being the "
    "threshold that alone accepts the target share of known validation images; higher is more "
    "known"
)
REPORTED_SCORES: tuple[str, ...] = (*SCORE_NAMES, COMBINED)
"""Every score a report may hold: the computed ones and the fitted fusion."""


def combined(scores: Mapping[str, np.ndarray], params: Mapping[str, float]) -> np.ndarray:
    """The ``combined`` score of images whose part scores are ``scores`` (name -> [N])."""
    parts = [np.asarray(scores[p], dtype=np.float64) / params[p] for p in COMBINED_PARTS]
    return np.minimum.reduce(parts)


def get_score(name: str) -> Score:
    """The :class:`Score` called ``name``; the error lists the valid names."""
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(
            f"unknown score {name!r}; choose one of {', '.join(SCORE_NAMES)}"
        ) from None


def score_definition(name: str) -> str:
    """Human-readable definition of a score (written into the model card)."""
    return COMBINED_DEFINITION if name == COMBINED else get_score(name).definition


def compute_score(
    name: str, *, logits: np.ndarray | None = None, reach: np.ndarray | None = None
) -> np.ndarray:
    """Score ``name`` for a batch: [N] float64, higher = more known."""
    score = get_score(name)
    value = logits if score.source == "logits" else reach
    if value is None:
        raise ValueError(
            f"score {name!r} needs the model's {score.source!r} output, which is None "
            "(a stage-1 plain model has no reachability)"
        )
    return score.fn(value)
