"""Model outputs of one image -> a :class:`Prediction`; open-set scores (higher = more known)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from service.card import COMBINED_PARTS
from service.schemas import Prediction, TopKEntry

SCORE_DEFINITIONS = {
    "reachability": "s_r / d_min: reach scale over the L2 distance to the nearest class centroid",
    "max_softmax": "largest softmax probability over the known classes",
    "energy": "T * logsumexp(logits / T) with T = 1 (negative free energy)",
    "combined": "min(max_softmax / params.max_softmax, reachability / params.reachability): "
    "each part divided by its own calibrated threshold (far and near novelty in one score)",
}


def max_softmax(probabilities: np.ndarray) -> float:
    """Largest class probability (0..1)."""
    return float(np.max(probabilities))


def energy(logits: np.ndarray, temperature: float = 1.0) -> float:
    """T * logsumexp(logits / T), computed stably (negative free energy; higher = more known)."""
    z = logits.astype(np.float64) / temperature
    m = float(np.max(z))
    return temperature * (m + float(np.log(np.sum(np.exp(z - m)))))


def unknown_score(
    name: str, row: dict[str, np.ndarray], params: Mapping[str, float] | None = None
) -> float:
    """The named score of one image's outputs (``params``: the combined score's divisors)."""
    if name == "combined":
        if params is None:
            raise ValueError("the combined score needs its params from the model card")
        return min(unknown_score(part, row) / params[part] for part in COMBINED_PARTS)
    if name == "reachability":
        return float(row["reachability"])
    if name == "max_softmax":
        return max_softmax(row["probabilities"])
    if name == "energy":
        return energy(row["logits"])
    raise ValueError(f"unknown score {name!r}; expected one of {', '.join(SCORE_DEFINITIONS)}")


def is_unknown(score: float, threshold: float) -> bool:
    """score < threshold means unknown; a NaN score is unknown too."""
    return not score >= threshold


def top_k(probabilities: np.ndarray, class_names: list[str], k: int) -> list[TopKEntry]:
    """The k most probable classes, most probable first (ties: lower index first)."""
    order = np.argsort(-probabilities, kind="stable")[: max(1, min(k, len(class_names)))]
    return [
        TopKEntry(label=class_names[i], class_index=int(i), probability=float(probabilities[i]))
        for i in order
    ]


def to_prediction(
    row: dict[str, np.ndarray],
    class_names: list[str],
    *,
    score_name: str,
    score_params: Mapping[str, float] | None = None,
    threshold: float,
    k: int,
    filename: str | None,
) -> Prediction:
    """Build the response entry of one image; unknown when its score < threshold (or NaN)."""
    probs = np.clip(row["probabilities"].astype(np.float64), 0.0, 1.0)  # float32 can pass 1
    best = int(np.argmax(probs))
    score = unknown_score(score_name, row, score_params)
    return Prediction(
        filename=filename,
        label=class_names[best],
        class_index=best,
        confidence=float(probs[best]),
        reachability=float(row["reachability"]),
        distance=float(row["distance"]),
        score=score,
        unknown=is_unknown(score, threshold),
        top_k=top_k(probs, class_names, k),
    )
