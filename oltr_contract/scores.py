"""Open-set scores and the unknown decision: one definition for training and the service.

Sign convention (everywhere in this project): HIGHER = MORE KNOWN. An image is accepted as a
known class when ``score >= threshold`` and reported as unknown otherwise (a NaN score is
unknown too): :func:`is_known`.

A score reads named model outputs (the ONNX artifact's names, :mod:`oltr_contract.artifact`;
batch on axis 0) and returns one float64 per image. Training's evaluation feeds it the PyTorch
model's outputs under the same names, the service feeds it onnxruntime's. Adding a score is one
:class:`Score` in :data:`SCORES` and its name in :data:`ScoreName`.

- ``reachability``: the model's ``reach = s_r / d_min`` (method notes section 3), passed through;
  d_min is an L2 distance, or a cosine distance for models built with ``reach_metric=cosine``.
- ``max_softmax``: the largest softmax probability (the official OLTR decision, threshold 0.1).
- ``energy``: ``T * logsumexp(logits / T)``, the negative free energy (Liu et al., NeurIPS 2020).
- ``combined``: ``min(max_softmax / t_msp, reachability / t_reach)``, each part divided by the
  threshold that alone accepts the target share of known validation images (its ``params``).
  Reachability catches far novelty (photos), max softmax near novelty (unseen digits);
  docs/BENCHMARKS.md has the figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, get_args

import numpy as np
import numpy.typing as npt

from oltr_contract.artifact import OUTPUT_NAMES

ScoreName = Literal["reachability", "max_softmax", "energy", "combined"]
"""Every score name a card, a setting or a report may use (checked against SCORES below)."""

Array = npt.NDArray[np.float64]
Outputs = Mapping[str, npt.ArrayLike]
"""Model outputs by artifact output name, batch on axis 0."""


def _logsumexp(x: Array) -> Array:
    """Row-wise log(sum(exp(x))) without overflow: m + log(sum(exp(x - m)))."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # all -inf rows give -inf instead of nan
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer there
        out: Array = (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]
        return out


def _batch(name: str, value: npt.ArrayLike, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s) (batch first), got {arr.shape}")
    return arr


def reachability(reach: npt.ArrayLike) -> Array:
    """The model's reachability ``s_r / d_min`` [N], returned as float64."""
    return _batch("reachability", reach, 1).astype(np.float64)


def max_softmax(probabilities: npt.ArrayLike) -> Array:
    """Largest probability per row of ``probabilities`` [N, K] -> [N] in [0, 1].

    The maximum is taken in the output's own dtype (float32 from the artifact), then widened:
    the value the service has always answered with."""
    out: Array = np.max(_batch("probabilities", probabilities, 2), axis=-1).astype(np.float64)
    return out


def energy(logits: npt.ArrayLike, temperature: float = 1.0) -> Array:
    """Negative free energy ``T * logsumexp(logits / T)`` per row of ``logits`` [N, K] -> [N]."""
    if temperature <= 0:
        raise ValueError(f"energy temperature must be > 0, got {temperature}")
    x = _batch("logits", logits, 2).astype(np.float64)
    return temperature * _logsumexp(x / temperature)


@dataclass(frozen=True)
class Score:
    """An open-set score: the model outputs it reads, how it is computed, what it means."""

    name: ScoreName
    reads: tuple[str, ...]
    """Artifact output names, passed to ``fn`` in this order."""
    fn: Callable[..., Array]
    definition: str


SCORES: Final[dict[str, Score]] = {
    s.name: s
    for s in (
        Score(
            "reachability",
            ("reachability",),
            reachability,
            "reach = s_r / d_min, d_min = distance of the direct feature to the nearest class "
            "centroid (L2, or 1 - cosine with model.reach_metric=cosine); higher is more known",
        ),
        Score(
            "max_softmax",
            ("probabilities",),
            max_softmax,
            "max_k softmax(logits)_k; higher is more known",
        ),
        Score(
            "energy",
            ("logits",),
            energy,
            "T * logsumexp(logits / T) with T = 1 (negative free energy); higher is more known",
        ),
    )
}
"""The scores computed directly from model outputs."""

COMBINED: Final = "combined"
COMBINED_PARTS: Final = ("max_softmax", "reachability")
COMBINED_DEFINITION: Final = (
    "min over (max_softmax, reachability) of score / params[score], params[score] being the "
    "threshold that alone accepts the target share of known validation images; higher is more "
    "known"
)
OUTPUT_SCORES: Final[tuple[str, ...]] = tuple(SCORES)
"""The scores computed directly from model outputs, in report order."""
SCORE_NAMES: Final[tuple[str, ...]] = (*OUTPUT_SCORES, COMBINED)
"""Every score: the computed ones and the fitted fusion."""

SCORE_RANGES: Final[dict[str, tuple[float, float]]] = {
    "max_softmax": (0.0, 1.0),
    "reachability": (0.0, math.inf),
    "combined": (0.0, math.inf),
    "energy": (-math.inf, math.inf),
}
"""Values each score can take; a threshold outside turns open-set detection off."""

if (
    set(get_args(ScoreName)) != set(SCORE_NAMES)
    or set(SCORE_RANGES) != set(SCORE_NAMES)
    or not all(set(s.reads) <= set(OUTPUT_NAMES) for s in SCORES.values())
):
    raise RuntimeError(
        "ScoreName and SCORE_RANGES must list every score, and scores read artifact outputs only"
    )


def threshold_problem(score: str, value: float) -> str | None:
    """Why ``value`` is no threshold for ``score`` (not finite, outside its range), or None."""
    low, high = SCORE_RANGES[score]
    if not math.isfinite(value):
        return f"threshold must be a finite number, got {value}"
    if not low <= value <= high:
        return f"threshold for the {score} score must be in [{low:g}, {high:g}], got {value:g}"
    return None


def get_score(name: str) -> Score:
    """The :class:`Score` called ``name``; the error lists the valid names."""
    try:
        return SCORES[name]
    except KeyError:
        raise ValueError(
            f"unknown score {name!r}; choose one of {', '.join(OUTPUT_SCORES)}"
        ) from None


def score_definition(name: str) -> str:
    """Human-readable definition of a score (written into the model card)."""
    return COMBINED_DEFINITION if name == COMBINED else get_score(name).definition


def reads(name: str) -> tuple[str, ...]:
    """The model outputs score ``name`` needs."""
    if name == COMBINED:
        return tuple(dict.fromkeys(o for p in COMBINED_PARTS for o in get_score(p).reads))
    return get_score(name).reads


def available_scores(outputs: Mapping[str, object]) -> tuple[str, ...]:
    """The computed scores whose outputs are all present (a plain model has no reachability)."""
    return tuple(n for n, s in SCORES.items() if all(o in outputs for o in s.reads))


def combined(part_scores: Mapping[str, npt.ArrayLike], params: Mapping[str, float]) -> Array:
    """The ``combined`` score of images whose part scores are ``part_scores`` (name -> [N])."""
    missing = [p for p in COMBINED_PARTS if not params.get(p, 0) > 0]
    if missing:
        raise ValueError(f"the combined score needs positive params for {missing}")
    parts = [np.asarray(part_scores[p], dtype=np.float64) / params[p] for p in COMBINED_PARTS]
    out: Array = np.minimum.reduce(parts)
    return out


def compute_score(name: str, outputs: Outputs, params: Mapping[str, float] | None = None) -> Array:
    """Score ``name`` of a batch of model ``outputs``: [N] float64, higher = more known.

    ``params``: the combined score's divisors (the model card's ``unknown_score.params``)."""
    if name == COMBINED:
        if params is None:
            raise ValueError("the combined score needs its params (card unknown_score.params)")
        return combined({p: compute_score(p, outputs) for p in COMBINED_PARTS}, params)
    score = get_score(name)
    missing = [o for o in score.reads if o not in outputs]
    if missing:
        raise ValueError(
            f"score {name!r} needs the model output(s) {missing}, which are absent "
            "(a stage-1 plain model has no reachability)"
        )
    return score.fn(*(outputs[o] for o in score.reads))


def is_known(scores: npt.ArrayLike, threshold: float) -> npt.NDArray[np.bool_]:
    """The decision rule: known where ``score >= threshold``; NaN scores are unknown."""
    return np.asarray(scores, dtype=np.float64) >= threshold
