"""The probe baselines of the accuracy benchmark, on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.accuracy.probes import Probe, class_means, cosine_reach, probe_outputs, unit

# Three training features: two of class 0 along x, one of class 1 along y.
TRAIN = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
LABELS = np.array([0, 0, 1])
QUERY = np.array([[3.0, 4.0]])  # unit (0.6, 0.8)


def test_unit_and_class_means() -> None:
    np.testing.assert_allclose(unit(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0, 0]])
    # class 0: unit features (1,0), (1,0) -> mean (1,0); two classes at right angles
    means = class_means(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 5.0]]), np.array([0, 0, 1]), 2)
    # class 0 mean of (1,0) and (.7071,.7071) = (.85355,.35355), unit: (.92388,.38268)
    np.testing.assert_allclose(means, [[0.92388, 0.38268], [0.0, 1.0]], atol=1e-5)


def test_cosine_reach() -> None:
    np.testing.assert_allclose(cosine_reach(np.array([0.8, 0.0, 1.0])), [50.0, 10.0, 1e7])


def test_ncm_hand_values() -> None:
    out = Probe("ncm").fit(TRAIN, LABELS).outputs(QUERY)
    np.testing.assert_allclose(out["logits"], [[16 * 0.6, 16 * 0.8]])  # cos to (1,0), (0,1)
    np.testing.assert_allclose(out["reachability"], [50.0])  # 10 / (1 - 0.8)
    np.testing.assert_allclose(out["distance"], [0.2])
    np.testing.assert_allclose(out["embedding"], [[0.6, 0.8]])
    assert out["nearest_class"].tolist() == [1]
    # softmax of (9.6, 12.8): 1 / (1 + e^-3.2) = 0.96083
    np.testing.assert_allclose(out["probabilities"], [[1 - 0.96083, 0.96083]], atol=1e-5)


@pytest.mark.parametrize(("k", "pred", "reach"), [(1, 1, 50.0), (3, 0, 30.0)])
def test_knn_hand_values(k: int, pred: int, reach: float) -> None:
    """Cosines of the query to the training features: 0.6, 0.6, 0.8.
    k=1: the (0,1) neighbour, class 1, reach 10 / 0.2. k=3: votes 2:1 for class 0, mean cosine
    2/3, reach 10 / (1/3) = 30."""
    out = Probe("knn", k=k).fit(TRAIN, LABELS).outputs(QUERY)
    assert int(out["logits"].argmax()) == pred
    np.testing.assert_allclose(out["reachability"], [reach])


def test_logreg_separates_and_shares_the_ncm_reach() -> None:
    rng = np.random.default_rng(0)
    feats = np.r_[rng.normal([5, 0], 0.5, (40, 2)), rng.normal([0, 5], 0.5, (5, 2))]
    labels = np.r_[np.zeros(40, int), np.ones(5, int)]
    probe = Probe("logreg").fit(feats, labels)
    out = probe.outputs(np.array([[4.0, 0.5], [0.5, 4.0]]))
    assert out["logits"].shape == (2, 2) and out["logits"].argmax(1).tolist() == [0, 1]
    ncm = Probe("ncm").fit(feats, labels).outputs(np.array([[4.0, 0.5], [0.5, 4.0]]))
    np.testing.assert_allclose(out["reachability"], ncm["reachability"])


def test_probe_outputs_per_set_and_errors() -> None:
    probe = Probe("ncm").fit(TRAIN, LABELS)
    outs = probe_outputs(probe, {"test": QUERY, "open": -QUERY}, {"test": [1], "open": [-1]})
    assert outs["test"]["labels"].tolist() == [1] and outs["open"]["labels"].tolist() == [-1]
    assert outs["open"]["reachability"][0] < outs["test"]["reachability"][0]
    with pytest.raises(RuntimeError, match="before fit"):
        Probe("ncm").outputs(QUERY)
    with pytest.raises(ValueError, match="unknown probe"):
        Probe("svm")  # type: ignore[arg-type]
