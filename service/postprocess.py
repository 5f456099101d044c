"""Model outputs of one image and its open-set decision -> a :class:`Prediction`.

The scores and the unknown decision are not computed here: :mod:`service.open_set` applies
:mod:`oltr_contract.scores`.
"""

from __future__ import annotations

import numpy as np

from service.schemas import Prediction, TopKEntry


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
    score: float,
    unknown: bool,
    k: int,
    filename: str | None,
) -> Prediction:
    """The response entry of one image whose open-set ``score`` and ``unknown`` flag are given."""
    probs = np.clip(row["probabilities"].astype(np.float64), 0.0, 1.0)  # float32 can pass 1
    best = int(np.argmax(probs))
    return Prediction(
        filename=filename,
        label=class_names[best],
        class_index=best,
        confidence=float(probs[best]),
        reachability=float(row["reachability"]),
        distance=float(row["distance"]),
        score=score,
        unknown=unknown,
        top_k=top_k(probs, class_names, k),
    )
