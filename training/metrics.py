"""Closed-set and open-set evaluation (method notes sections 7-8), numpy in, python out.

Conventions, stated once:

- Labels are class indices ``0..K-1``; ``-1`` marks an open-set (unknown) image.
- ``preds`` are argmax classes; ``accepted`` is the contract's decision
  (:func:`oltr_contract.scores.is_known`: ``score >= threshold``, higher = more known). A
  rejected image is predicted "unknown".
- Shot groups by training images per class (paper Sec. 4 text): many ``> many`` (100),
  few ``< few`` (20), medium otherwise, i.e. ``few <= n <= many`` (20..100 inclusive; the
  official code later used ``>= 100`` / ``<= 20``; only the numbers are configurable).
- Ranking metrics treat KNOWN images as the positive class.
- Every returned number is a plain python float/int (or None), so reports are JSON-able.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from oltr_contract.scores import (
    COMBINED_PARTS,
    SCORE_NAMES,
    available_scores,
    compute_score,
    is_known,
    score_definition,
)

GROUPS = ("many", "medium", "few")
OPEN_LABEL = -1


# --------------------------------------------------------------------------- input checks


def _ints(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _scores(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(arr)))} non-finite values")
    return arr


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"arrays differ in length: {lengths}")


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if len(values) else None


# --------------------------------------------------------------------------- closed set


def shot_groups(train_counts: Sequence[int], many: int = 100, few: int = 20) -> list[str]:
    """Shot group per class: "many" if count > many, "few" if count < few, else "medium"."""
    if few > many:
        raise ValueError(f"few-shot threshold ({few}) must not exceed many-shot ({many})")
    return ["many" if n > many else "few" if n < few else "medium" for n in train_counts]


def closed_set_accuracy(
    preds: Any, labels: Any, train_counts: Sequence[int], many: int = 100, few: int = 20
) -> dict[str, Any]:
    """Top-1 accuracy: overall (sample mean), per class, and per shot group.

    A group's value is the mean of the per-class accuracies of its classes that have test
    images (None when there are none). ``per_class[k]`` is None when class k has no images.
    Predictions outside ``0..K-1`` (e.g. -1 for "rejected") simply count as wrong.
    """
    preds, labels = _ints("preds", preds), _ints("labels", labels)
    _same_length(preds=preds, labels=labels)
    num_classes = len(train_counts)
    if labels.size == 0:
        raise ValueError("closed_set_accuracy needs at least one image")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (K = len(train_counts))")
    correct = preds == labels
    per_class = [
        float(correct[labels == k].mean()) if np.any(labels == k) else None
        for k in range(num_classes)
    ]
    groups = shot_groups(train_counts, many, few)
    result: dict[str, Any] = {"overall": float(correct.mean())}
    for g in GROUPS:
        result[g] = _mean(
            [a for a, gk in zip(per_class, groups, strict=True) if gk == g and a is not None]
        )
    result["per_class"] = per_class
    result["num_samples"] = int(labels.size)
    return result


# --------------------------------------------------------------------------- open set decisions


def _decisions(preds: Any, labels: Any, accepted: Any) -> tuple[np.ndarray, ...]:
    preds, labels = _ints("preds", preds), _ints("labels", labels)
    accepted = np.asarray(accepted, dtype=bool)
    _same_length(preds=preds, labels=labels, accepted=accepted)
    if labels.size == 0:
        raise ValueError("open-set metrics need at least one image")
    return preds, labels, accepted


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def f_measure(preds: Any, labels: Any, accepted: Any) -> dict[str, float | int]:
    """Open-set F-measure as the official OLTR code computes it after its January 2020 fix.

    TP = known & correct & accepted; FP = known & (wrong or rejected); FN = open & accepted.
    Correctly rejected open images are not counted. P, R and F are 0 when undefined.
    """
    preds, labels, accepted = _decisions(preds, labels, accepted)
    known = labels != OPEN_LABEL
    tp = int(np.sum(known & (preds == labels) & accepted))
    fp = int(np.sum(known)) - tp
    fn = int(np.sum(~known & accepted))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f = _ratio(2 * precision * recall, precision + recall)
    return {"f_measure": f, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn}


def open_set_accuracy(preds: Any, labels: Any, accepted: Any) -> float:
    """Share of images decided right: known ones accepted AND correct, open ones rejected."""
    preds, labels, accepted = _decisions(preds, labels, accepted)
    known = labels != OPEN_LABEL
    right = np.where(known, accepted & (preds == labels), ~accepted)
    return float(right.mean())


def macro_f1(preds: Any, labels: Any, accepted: Any) -> float:
    """Macro-averaged F1 over the K known classes plus "unknown".

    The decision is ``pred`` if accepted else unknown; open images are labelled unknown.
    Per class F1 = 2TP / (2TP + FP + FN); the mean runs over every class that occurs in the
    labels or the decisions (a class absent from both has no defined F1), as scikit-learn does.
    """
    preds, labels, accepted = _decisions(preds, labels, accepted)
    decided = np.where(accepted, preds, OPEN_LABEL)
    f1s = []
    for c in np.union1d(labels, decided):
        tp = np.sum((decided == c) & (labels == c))
        fp = np.sum((decided == c) & (labels != c))
        fn = np.sum((decided != c) & (labels == c))
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


# --------------------------------------------------------------------------- scores and thresholds


def auroc(known_scores: Any, open_scores: Any) -> float:
    """Area under the ROC curve, known = positive (higher score = more known).

    Equals P(known score > open score) + 0.5 * P(tie): tied scores form one ROC step and the
    trapezoid rule counts each known/open tie as half (scikit-learn's roc_auc_score).
    """
    k, o = _scores("known_scores", known_scores), _scores("open_scores", open_scores)
    y = np.r_[np.ones(k.size), np.zeros(o.size)]
    return float(roc_auc_score(y, np.r_[k, o]))


def calibrate_threshold(known_scores: Any, target_accept: float = 0.95) -> float:
    """Largest threshold that accepts at least ``target_accept`` of the known scores.

    Rule: with n known scores sorted descending, take k = ceil(target_accept * n) and return
    the k-th largest score. Accepting ``score >= threshold`` then keeps at least k of n (more
    only when scores tie with the k-th), and any larger threshold keeps fewer than k.
    """
    s = _scores("known_scores", known_scores)
    if not 0 < target_accept <= 1:
        raise ValueError(f"target_accept must lie in (0, 1], got {target_accept}")
    k = max(1, math.ceil(target_accept * s.size - 1e-9))  # tolerance: 0.95*n may round up
    return float(np.sort(s)[::-1][k - 1])


def fit_combined(val_known: Mapping[str, Any], target_accept: float = 0.95) -> dict[str, float]:
    """Parameters of the ``combined`` score: each part's threshold calibrated on known images."""
    return {p: calibrate_threshold(val_known[p], target_accept) for p in COMBINED_PARTS}


def accept_rate(scores: Any, threshold: float) -> float:
    """Share of ``scores`` that are accepted (``score >= threshold``)."""
    return float(np.mean(is_known(_scores("scores", scores), threshold)))


def fpr_at_tpr(known_scores: Any, open_scores: Any, tpr: float = 0.95) -> float:
    """False-positive rate (open images accepted) at the first threshold reaching ``tpr``.

    Known = positive. The threshold is :func:`calibrate_threshold` on the known scores, i.e.
    the highest ROC operating point whose TPR is >= ``tpr`` (no interpolation); open scores
    tied with that threshold count as accepted.
    """
    threshold = calibrate_threshold(known_scores, tpr)
    return accept_rate(_scores("open_scores", open_scores), threshold)


# --------------------------------------------------------------------------- accumulation


@dataclass
class ScoredSet:
    """Evaluated images: argmax ``preds``, ``labels`` (-1 = open), ``scores`` name -> [N]."""

    preds: np.ndarray
    labels: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.preds, self.labels = _ints("preds", self.preds), _ints("labels", self.labels)
        self.scores = {name: np.asarray(s, dtype=np.float64) for name, s in self.scores.items()}
        _same_length(preds=self.preds, labels=self.labels, **self.scores)


class ScoreCollector:
    """Accumulates argmax predictions and every available score over batches.

    ``update(outputs, labels)`` takes one batch of model outputs under the ONNX artifact's
    names (numpy arrays, or CPU tensors without grad) and computes every score whose outputs
    are present with :func:`oltr_contract.scores.compute_score`, the service's own function.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self._preds: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._scores: dict[str, list[np.ndarray]] = {}

    def update(self, outputs: Mapping[str, Any], labels: Any) -> None:
        """Add one batch: model ``outputs`` by artifact name ([B, ...] each), ``labels`` [B]."""
        names = available_scores(outputs)
        if self._preds and set(names) != set(self._scores):
            raise ValueError(
                f"batch scores {sorted(names)} differ from earlier batches' {sorted(self._scores)}"
                " (every batch needs the same model outputs)"
            )
        self._preds.append(np.argmax(np.asarray(outputs["logits"]), axis=1))
        self._labels.append(_ints("labels", labels))
        for name in names:
            self._scores.setdefault(name, []).append(compute_score(name, outputs))

    def compute(self) -> ScoredSet:
        """Everything accumulated since the last reset, as one :class:`ScoredSet`."""
        if not self._preds:
            raise ValueError("ScoreCollector.compute() called before any update()")
        return ScoredSet(
            preds=np.concatenate(self._preds),
            labels=np.concatenate(self._labels),
            scores={name: np.concatenate(parts) for name, parts in self._scores.items()},
        )


# --------------------------------------------------------------------------- the report


def _score_block(
    name: str,
    test: ScoredSet,
    open_sets: Mapping[str, ScoredSet],
    val_known: np.ndarray,
    val_open: np.ndarray | None,
    target_accept: float,
    groups: dict[str, Any],
) -> dict[str, Any]:
    """Ranking metrics per open set and decisions at the threshold calibrated on val."""
    threshold = calibrate_threshold(val_known, target_accept)
    known_scores = test.scores[name]
    known_accepted = is_known(known_scores, threshold)
    rejected_as_wrong = np.where(known_accepted, test.preds, OPEN_LABEL)
    per_open: dict[str, Any] = {}
    for open_name, open_set in open_sets.items():
        open_scores = open_set.scores[name]
        preds = np.r_[test.preds, open_set.preds]
        labels = np.r_[test.labels, np.full(open_set.labels.size, OPEN_LABEL)]
        accepted = np.r_[known_accepted, is_known(open_scores, threshold)]
        per_open[open_name] = {
            "num_images": int(open_scores.size),
            "auroc": auroc(known_scores, open_scores),
            "fpr_at_95tpr": fpr_at_tpr(known_scores, open_scores, 0.95),
            "open_reject": 1.0 - accept_rate(open_scores, threshold),
            **f_measure(preds, labels, accepted),
            "open_set_accuracy": open_set_accuracy(preds, labels, accepted),
            "macro_f1": macro_f1(preds, labels, accepted),
        }
    top1 = closed_set_accuracy(rejected_as_wrong, test.labels, **groups)
    return {
        "definition": score_definition(name),
        "threshold": threshold,
        "val_known_accept": accept_rate(val_known, threshold),
        "val_open_reject": None if val_open is None else 1.0 - accept_rate(val_open, threshold),
        "test_known_accept": float(known_accepted.mean()),
        "top1_rejected_as_wrong": {g: top1[g] for g in ("overall", *GROUPS)},
        "open_sets": per_open,
    }


def _require_scores(where: str, available: Mapping[str, Any], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in available]
    if missing:
        raise ValueError(f"{where} lacks score(s) {missing}; it has {sorted(available)}")


def evaluation_report(
    test: ScoredSet,
    open_sets: Mapping[str, ScoredSet],
    val_known: Mapping[str, np.ndarray],
    *,
    train_counts: Sequence[int],
    many: int = 100,
    few: int = 20,
    unknown_score: str | None,
    target_accept: float = 0.95,
    val_open: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Closed-set and open-set metrics of one model as a JSON-able dict.

    Args:
        test: the class-balanced known test set (labels 0..K-1).
        open_sets: name -> open images (their labels are ignored and treated as -1).
        val_known: score name -> scores of known validation images (threshold calibration).
        train_counts: training images per class (shot groups).
        unknown_score: the score the product decides with; its block is copied to
            ``open_set.decision``. None: no decision (e.g. for side-by-side tables only).
        val_open: score name -> scores of open validation images (reported reject rate).

    Every score present in ``test.scores`` (reachability, max_softmax, energy, in that order)
    is evaluated: AUROC and FPR@95TPR per open set, and F-measure, open-set accuracy,
    macro-F1, accept/reject rates at the threshold that accepts ``target_accept`` of val_known.
    """
    names = [n for n in SCORE_NAMES if n in test.scores]
    for open_name, open_set in open_sets.items():
        _require_scores(f"open set {open_name!r}", open_set.scores, names)
    _require_scores("val_known", val_known, names)
    if val_open is not None:
        _require_scores("val_open", val_open, names)
    if unknown_score is not None and unknown_score not in names:
        raise ValueError(f"unknown_score {unknown_score!r} is not among the scores {names}")
    groups = {"train_counts": train_counts, "many": many, "few": few}
    group_of_class = shot_groups(train_counts, many, few)
    blocks = {
        n: _score_block(
            n,
            test,
            open_sets,
            val_known[n],
            None if val_open is None else val_open[n],
            target_accept,
            groups,
        )
        for n in names
    }
    decision = None
    if unknown_score is not None:
        chosen = blocks[unknown_score]
        decision = {
            "score": unknown_score,
            "threshold": chosen["threshold"],
            "known_accept": chosen["val_known_accept"],
            "open_reject": chosen["val_open_reject"],
        }
    return {
        "closed_set": closed_set_accuracy(test.preds, test.labels, **groups),
        "shot_groups": {
            "rule": f"many: > {many} training images; few: < {few}; medium: {few}..{many}",
            "many_shot": many,
            "few_shot": few,
            "groups": group_of_class,
            "num_classes": {g: group_of_class.count(g) for g in GROUPS},
        },
        "open_set": {
            "positive": "known",
            "target_known_accept": target_accept,
            "unknown_score": unknown_score,
            "decision": decision,
            "scores": blocks,
        },
    }
