"""Open-set scores and the per-image prediction, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.postprocess import (
    energy,
    is_unknown,
    max_softmax,
    to_prediction,
    top_k,
    unknown_score,
)

NAMES = ["cat", "dog", "owl"]


def _row(logits, reach=2.0, dist=5.0):
    logits = np.array(logits, dtype=np.float32)
    e = np.exp(logits - logits.max())
    return {
        "logits": logits,
        "probabilities": (e / e.sum()).astype(np.float32),
        "reachability": np.float32(reach),
        "distance": np.float32(dist),
        "nearest_class": np.int64(0),
        "embedding": np.zeros(4, dtype=np.float32),
    }


def test_energy_is_logsumexp():
    # logits (0, 0): log(e^0 + e^0) = log 2 = 0.693147
    assert energy(np.array([0.0, 0.0])) == pytest.approx(math.log(2))
    # (1000, 1000) must not overflow: 1000 + log 2
    assert energy(np.array([1000.0, 1000.0])) == pytest.approx(1000 + math.log(2))
    # T = 2, logits (2, 0): 2 * log(e^1 + e^0) = 2 * 1.313262 = 2.626523
    assert energy(np.array([2.0, 0.0]), temperature=2.0) == pytest.approx(2.626523, abs=1e-6)


def test_max_softmax_and_named_scores():
    row = _row([2.0, 0.0, 0.0], reach=3.5)
    # softmax(2, 0, 0) max = e^2 / (e^2 + 2) = 7.389056 / 9.389056 = 0.786986
    assert max_softmax(row["probabilities"]) == pytest.approx(0.786986, abs=1e-6)
    assert unknown_score("reachability", row) == pytest.approx(3.5)
    assert unknown_score("max_softmax", row) == pytest.approx(0.786986, abs=1e-6)
    # energy(2, 0, 0) = log(e^2 + 2) = log 9.389056 = 2.239545
    assert unknown_score("energy", row) == pytest.approx(2.239545, abs=1e-5)
    with pytest.raises(ValueError, match="unknown score 'odin'"):
        unknown_score("odin", row)


def test_top_k_order_ties_and_clipping():
    probs = np.array([0.2, 0.5, 0.3])
    assert [e.label for e in top_k(probs, NAMES, 2)] == ["dog", "owl"]
    assert len(top_k(probs, NAMES, 10)) == 3  # k clipped to K
    tied = top_k(np.array([0.4, 0.2, 0.4]), NAMES, 3)
    assert [e.class_index for e in tied] == [0, 2, 1]  # ties: lower index first


@pytest.mark.parametrize(("threshold", "unknown"), [(3.0, False), (3.5, False), (3.6, True)])
def test_unknown_when_score_below_threshold(threshold, unknown):
    p = to_prediction(
        _row([0.0, 1.0, 0.0], reach=3.5),
        NAMES,
        score_name="reachability",
        threshold=threshold,
        k=2,
        filename="x.png",
    )
    assert p.unknown is unknown
    assert (p.label, p.class_index, p.filename) == ("dog", 1, "x.png")
    assert p.score == pytest.approx(3.5) and p.reachability == pytest.approx(3.5)
    assert p.distance == pytest.approx(5.0)
    # softmax(0, 1, 0)[1] = e / (e + 2) = 2.718282 / 4.718282 = 0.576117
    assert p.confidence == pytest.approx(0.576117, abs=1e-6)


def test_decision_boundary_and_nan():
    assert is_unknown(0.99, 1.0) and not is_unknown(1.0, 1.0) and not is_unknown(1.01, 1.0)
    assert is_unknown(float("nan"), 0.0)  # a broken score never passes as known


def test_probability_rounding_above_one_is_clipped():
    row = _row([50.0, 0.0, 0.0])
    row["probabilities"] = np.array([1.0000001, 0.0, 0.0], dtype=np.float32)
    p = to_prediction(row, NAMES, score_name="max_softmax", threshold=0.5, k=1, filename=None)
    assert p.confidence == 1.0 and p.top_k[0].probability == 1.0


def test_combined_score_is_the_smaller_normalised_part():
    row = _row([2.0, 0.0, 0.0], reach=3.5)
    params = {"max_softmax": 0.5, "reachability": 2.0}
    # msp / 0.5 = 0.786986 / 0.5 = 1.573972; reach / 2 = 3.5 / 2 = 1.75 -> min = 1.573972
    assert unknown_score("combined", row, params) == pytest.approx(1.573972, abs=1e-6)
    far = _row([2.0, 0.0, 0.0], reach=0.7)
    # reach / 2 = 0.35 < 1.573972: a confident prediction far from every centroid
    assert unknown_score("combined", far, params) == pytest.approx(0.35, abs=1e-6)
    pred = to_prediction(
        far, NAMES, score_name="combined", score_params=params, threshold=0.9, k=1, filename=None
    )
    assert pred.unknown and pred.score == pytest.approx(0.35, abs=1e-6)
    with pytest.raises(ValueError, match="params"):
        unknown_score("combined", row)


def test_card_with_combined_score_requires_its_params():
    from service.card import UnknownScoreSpec

    assert UnknownScoreSpec(name="combined", params={"max_softmax": 0.6, "reachability": 1.8})
    with pytest.raises(ValueError, match="reachability"):
        UnknownScoreSpec(name="combined", params={"max_softmax": 0.6})
