"""The per-image prediction: label, confidence, top-k, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from _service_fixtures import output_row

from service.postprocess import to_prediction, top_k

NAMES = ["cat", "dog", "owl"]


def test_top_k_order_ties_and_clipping():
    probs = np.array([0.2, 0.5, 0.3])
    assert [e.label for e in top_k(probs, NAMES, 2)] == ["dog", "owl"]
    assert len(top_k(probs, NAMES, 10)) == 3  # k clipped to K
    tied = top_k(np.array([0.4, 0.2, 0.4]), NAMES, 3)
    assert [e.class_index for e in tied] == [0, 2, 1]  # ties: lower index first


def test_prediction_fields():
    p = to_prediction(
        output_row([0.0, 1.0, 0.0], reach=3.5),
        NAMES,
        score=1.25,
        unknown=True,
        k=2,
        filename="x.png",
    )
    assert (p.label, p.class_index, p.filename) == ("dog", 1, "x.png")
    assert p.score == 1.25 and p.unknown is True
    assert p.reachability == pytest.approx(3.5) and p.distance == pytest.approx(5.0)
    # softmax(0, 1, 0)[1] = e / (e + 2) = 2.718282 / 4.718282 = 0.576117
    assert p.confidence == pytest.approx(0.576117, abs=1e-6)
    assert [e.label for e in p.top_k] == ["dog", "cat"]


def test_probability_rounding_above_one_is_clipped():
    row = output_row([50.0, 0.0, 0.0])
    row["probabilities"] = np.array([1.0000001, 0.0, 0.0], dtype=np.float32)
    p = to_prediction(row, NAMES, score=1.0, unknown=False, k=1, filename=None)
    assert p.confidence == 1.0 and p.top_k[0].probability == 1.0


def test_card_with_combined_score_requires_its_params():
    from service.card import UnknownScoreSpec

    assert UnknownScoreSpec(name="combined", params={"max_softmax": 0.6, "reachability": 1.8})
    with pytest.raises(ValueError, match="reachability"):
        UnknownScoreSpec(name="combined", params={"max_softmax": 0.6})
