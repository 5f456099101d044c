"""The probe baselines: what a user gets in twenty lines from the same frozen backbone features.

Every probe sees the backbone's global-average-pooled feature of each image (the clean,
un-augmented training images: one view each), L2-normalised, and answers like a model does:
the ONNX artifact's outputs: ``logits`` [N, K] (argmax = the class), ``probabilities`` and
``reachability`` [N], the probe's own distance-based known-ness, so the benchmark's report
scores it exactly as it scores OLTR (higher = more known):

- ``logreg``: scikit-learn's ``LogisticRegression(class_weight="balanced")``; logits are its
  decision function; reach = s_r / (1 - max cosine to a class mean), the nearest-class-mean
  cosine reachability of the same features (cosine to class mean separated far open sets best
  in the issue that set these baselines).
- ``ncm``: nearest class mean by cosine; logits = ``scale * cos(v, mean_k)``; reach as above.
- ``knn``: k nearest training features by cosine, majority vote (ties: the nearer class sum of
  cosines); logits = ``scale * vote share``; reach = s_r / (1 - mean cosine of the k nearest).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from sklearn.linear_model import LogisticRegression

ProbeKind = Literal["logreg", "ncm", "knn"]
REACH_SCALE = 10.0
"""s_r of the probes' reach, as OLTR's default (a monotone transform: AUROC does not see it)."""
LOGIT_SCALE = 16.0
"""Scale of the cosine / vote-share logits, as OLTR's cosine classifier (affects softmax only)."""
EPS = 1e-6


def unit(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Unit-norm mean of the unit features of each class, [K, D]."""
    z = unit(features)
    return unit(np.stack([z[labels == k].mean(axis=0) for k in range(num_classes)]))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable (the row maximum is subtracted first)."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def cosine_reach(similarity: np.ndarray) -> np.ndarray:
    """``s_r / (1 - similarity)``, clamped like the model's distances (never divides by 0)."""
    return REACH_SCALE / np.maximum(1.0 - similarity, EPS)


class Probe:
    """A fitted probe: ``outputs(features)`` gives the model-like outputs of some images."""

    def __init__(self, kind: ProbeKind, k: int = 1, *, seed: int = 0) -> None:
        if kind not in ("logreg", "ncm", "knn"):
            raise ValueError(f"unknown probe {kind!r}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.kind, self.k, self.seed = kind, k, seed
        self._train: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._means: np.ndarray | None = None
        self._logreg: LogisticRegression | None = None

    def fit(self, features: np.ndarray, labels: np.ndarray) -> Probe:
        """Fit on training features [N, D] and their labels 0..K-1."""
        labels = np.asarray(labels, dtype=np.int64)
        num_classes = int(labels.max()) + 1
        self._train, self._labels = unit(features), labels
        self._means = class_means(features, labels, num_classes)
        if self.kind == "logreg":
            self._logreg = LogisticRegression(
                class_weight="balanced", max_iter=5000, random_state=self.seed
            ).fit(self._train, labels)
        return self

    def outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """The model-like outputs under the ONNX artifact's names: ``logits``,
        ``probabilities`` (float32, as the artifact), ``reachability``, ``distance`` (1 - the
        similarity), ``nearest_class`` (nearest class mean), ``embedding`` (unit features)."""
        if self._means is None or self._train is None or self._labels is None:
            raise RuntimeError("Probe.outputs() called before fit()")
        z = unit(features)
        to_means = z @ self._means.T
        similarity = to_means.max(axis=1)
        if self.kind == "logreg":
            assert self._logreg is not None
            logits = self._logreg.decision_function(z)
            if logits.ndim == 1:  # two classes: P(1) = sigmoid(d) = softmax([0, d])[1]
                logits = np.stack([np.zeros_like(logits), logits], axis=1)
        elif self.kind == "ncm":
            logits = LOGIT_SCALE * to_means
        else:
            logits, similarity = self._knn(z, len(self._means))
        logits = np.asarray(logits, dtype=np.float64)
        return {
            "logits": logits,
            "probabilities": softmax(logits).astype(np.float32),
            "reachability": cosine_reach(similarity),
            "distance": 1.0 - similarity,
            "nearest_class": to_means.argmax(axis=1),
            "embedding": z,
        }

    def _knn(self, z: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._train is not None and self._labels is not None
        sims = z @ self._train.T
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, : self.k]
        near_sims = np.take_along_axis(sims, nearest, axis=1)
        votes = np.zeros((len(z), num_classes))
        weights = np.zeros((len(z), num_classes))
        rows = np.repeat(np.arange(len(z)), nearest.shape[1])
        np.add.at(votes, (rows, self._labels[nearest].ravel()), 1.0)
        np.add.at(weights, (rows, self._labels[nearest].ravel()), near_sims.ravel())
        share = (votes + 1e-3 * weights) / nearest.shape[1]  # cosine sums only break ties
        return LOGIT_SCALE * share, near_sims.mean(axis=1)


def probe_outputs(
    probe: Probe,
    pooled: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
) -> dict[str, dict[str, np.ndarray]]:
    """The probe's outputs (with ``labels``) for every set in ``pooled`` (name -> [N, D])."""
    return {
        name: {**probe.outputs(features), "labels": np.asarray(labels[name], dtype=np.int64)}
        for name, features in pooled.items()
    }
