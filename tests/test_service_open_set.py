"""The service's open-set policy: score and threshold precedence, the decision on model
outputs (hand-computed), and the settings a model's card cannot serve."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _service_fixtures import output_row

from oltr_contract.scores import score_definition
from service.card import ModelCard
from service.config import Settings
from service.errors import ModelLoadError
from service.open_set import check_policy, policy_for

PARAMS = {"max_softmax": 0.5, "reachability": 2.0}


def _card(score: str = "combined", threshold: float = 0.9) -> ModelCard:
    return ModelCard.model_validate(
        {
            "version": "abc",
            "class_names": ["cat", "dog", "owl"],
            "input_size": 8,
            "preprocess": {"resize_shorter": 8, "crop": 8},
            "unknown_score": {
                "name": score,
                "definition": "as calibrated",
                "params": PARAMS if score == "combined" else None,
            },
            "threshold": threshold,
        }
    )


@pytest.mark.parametrize(
    ("settings", "admin", "per_request", "expected"),
    [
        ({}, None, None, (0.9, "card")),
        ({"threshold": 0.7}, None, None, (0.7, "settings")),
        ({"threshold": 0.7}, 0.6, None, (0.6, "admin")),
        ({"threshold": 0.7}, 0.6, 0.5, (0.5, "request")),
    ],
)
def test_threshold_precedence(settings, admin, per_request, expected):
    policy = policy_for(
        Settings(**settings), _card(), admin_threshold=admin, request_threshold=per_request
    )
    assert (policy.threshold, policy.source) == expected
    assert policy.score == "combined" and policy.params == PARAMS
    assert policy.definition == "as calibrated"  # the card's own words for its score


def test_a_score_from_the_settings_uses_the_contract_definition_and_no_params():
    policy = policy_for(Settings(unknown_score="energy", threshold=1.0), _card())
    assert policy.score == "energy" and policy.params is None
    assert policy.definition == score_definition("energy")


def test_decisions_by_hand():
    # softmax(2, 0, 0) max = e^2 / (e^2 + 2) = 0.786986; msp / 0.5 = 1.573972.
    # near: reach 3.5 / 2 = 1.75 -> combined 1.573972; far: reach 0.7 / 2 = 0.35.
    rows = [output_row([2.0, 0.0, 0.0], 3.5), output_row([2.0, 0.0, 0.0], 0.7)]
    combined = policy_for(Settings(), _card()).decide(rows)
    np.testing.assert_allclose(combined.scores, [1.573972, 0.35], atol=1e-6)
    assert combined.unknown.tolist() == [False, True]  # threshold 0.9
    energy = policy_for(Settings(unknown_score="energy", threshold=2.2), _card()).decide(rows)
    # energy(2, 0, 0) = log(e^2 + 2) = log 9.389056 = 2.239545, for both rows
    np.testing.assert_allclose(energy.scores, [2.239545] * 2, atol=1e-5)
    assert energy.unknown.tolist() == [False, False]
    reach = policy_for(Settings(unknown_score="reachability", threshold=3.5), _card())
    assert reach.decide(rows).unknown.tolist() == [False, True]  # 3.5 >= 3.5 is known


def test_a_nan_score_is_unknown():
    rows = [output_row([0.0, 0.0, 0.0], math.nan)]
    policy = policy_for(Settings(unknown_score="reachability", threshold=-1e9), _card())
    assert policy.decide(rows).unknown.tolist() == [True]


def test_settings_the_card_cannot_serve_are_refused():
    with pytest.raises(ModelLoadError, match="has no combined score parameters"):
        check_policy(Settings(unknown_score="combined"), _card("reachability"), "m.onnx")
    with pytest.raises(ModelLoadError, match="set OLTR_THRESHOLD too"):
        check_policy(Settings(unknown_score="energy"), _card(), "m.onnx")
    check_policy(Settings(unknown_score="energy", threshold=1.0), _card(), "m.onnx")
    check_policy(Settings(), _card(), "m.onnx")
