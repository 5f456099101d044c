"""Open-set scores against closed-form values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.scorers import (
    SCORE_NAMES,
    SCORES,
    compute_score,
    energy,
    max_softmax,
    score_definition,
)

LN2, LN3 = math.log(2), math.log(3)
# Row 0: exp(logits) = [1, 3]    -> sum 4, softmax [1/4, 3/4]
# Row 1: exp(logits) = [2, 2, 1] -> sum 5, softmax [2/5, 2/5, 1/5]  (padded with -inf: exp = 0)
LOGITS = np.array([[0.0, LN3, -np.inf], [LN2, LN2, 0.0]])


def test_max_softmax_closed_form() -> None:
    np.testing.assert_allclose(max_softmax(LOGITS), [3 / 4, 2 / 5])


def test_energy_closed_form() -> None:
    # T = 1: log(sum exp) = log 4 and log 5.
    np.testing.assert_allclose(energy(LOGITS), [math.log(4), math.log(5)])
    # T = 2, logits [0, 2 ln 3]: 2 * log(exp(0) + exp(ln 3)) = 2 log 4.
    np.testing.assert_allclose(
        energy(np.array([[0.0, 2 * LN3]]), temperature=2.0), [2 * math.log(4)]
    )


def test_scores_are_numerically_stable() -> None:
    big = np.array([[1000.0, 1000.0], [-1000.0, -1000.0]])
    # logsumexp(c, c) = c + log 2; softmax of equal logits = 1/2, whatever c is.
    np.testing.assert_allclose(energy(big), [1000 + LN2, -1000 + LN2])
    np.testing.assert_allclose(max_softmax(big), [0.5, 0.5])
    # A row of -inf logits has zero total mass: log 0 = -inf, not nan.
    assert energy(np.array([[-np.inf, -np.inf]]))[0] == -np.inf


def test_max_softmax_is_shift_invariant_and_energy_shifts() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7))
    np.testing.assert_allclose(max_softmax(x + 12.5), max_softmax(x))
    # logsumexp(x + c) = logsumexp(x) + c
    np.testing.assert_allclose(energy(x + 12.5), energy(x) + 12.5)


def test_higher_means_more_known() -> None:
    confident, flat = [10.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    logits = np.array([confident, flat])
    for name in ("max_softmax", "energy"):
        s = compute_score(name, logits=logits)
        assert s[0] > s[1], name


def test_compute_score_dispatch() -> None:
    reach = np.array([2.0, 0.5])
    np.testing.assert_array_equal(compute_score("reachability", reach=reach), reach)
    np.testing.assert_allclose(compute_score("energy", logits=LOGITS), energy(LOGITS))
    np.testing.assert_allclose(compute_score("max_softmax", logits=LOGITS), max_softmax(LOGITS))


def test_reachability_without_reach_names_the_score() -> None:
    with pytest.raises(ValueError, match="'reachability' needs the model's 'reach'"):
        compute_score("reachability", logits=LOGITS, reach=None)
    with pytest.raises(ValueError, match="'energy' needs the model's 'logits'"):
        compute_score("energy", reach=np.ones(2))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown score 'odin'.*reachability, max_softmax, energy"):
        compute_score("odin", logits=LOGITS)
    with pytest.raises(ValueError, match=r"logits must be \[N, K\]"):
        max_softmax(np.ones(3))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        energy(LOGITS, temperature=0.0)
    with pytest.raises(ValueError, match=r"reach must be \[N\]"):
        compute_score("reachability", reach=np.ones((2, 2)))


def test_definitions_state_the_sign() -> None:
    assert SCORE_NAMES == ("reachability", "max_softmax", "energy")
    assert set(SCORES) == set(SCORE_NAMES)
    for name in SCORE_NAMES:
        assert "higher is more known" in score_definition(name)
    assert "s_r / d_min" in score_definition("reachability")
    assert "logsumexp" in score_definition("energy")


def test_combined_is_the_minimum_of_the_normalised_parts():
    from training.scorers import combined, score_definition

    scores = {"max_softmax": np.array([0.9, 0.5, 0.2]), "reachability": np.array([2.0, 8.0, 1.0])}
    params = {"max_softmax": 0.5, "reachability": 4.0}
    # msp / 0.5 = [1.8, 1.0, 0.4]; reach / 4 = [0.5, 2.0, 0.25]; min = [0.5, 1.0, 0.25]
    np.testing.assert_allclose(combined(scores, params), [0.5, 1.0, 0.25])
    assert "higher is more known" in score_definition("combined")
