"""The training/service contract (oltr_contract): names, scores against closed-form values
worked out by hand, the decision rule, and that the service imports without torch."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from oltr_contract.artifact import OUTPUT_NAMES
from oltr_contract.scores import (
    COMBINED,
    OUTPUT_SCORES,
    SCORE_NAMES,
    SCORES,
    available_scores,
    combined,
    compute_score,
    energy,
    is_known,
    max_softmax,
    reads,
    score_definition,
    threshold_problem,
)

REPO = Path(__file__).resolve().parents[1]
LN2, LN3 = math.log(2), math.log(3)
# Row 0: exp(logits) = [1, 3]    -> sum 4, softmax [1/4, 3/4]
# Row 1: exp(logits) = [2, 2, 1] -> sum 5, softmax [2/5, 2/5, 1/5]  (padded with -inf: exp = 0)
LOGITS = np.array([[0.0, LN3, -np.inf], [LN2, LN2, 0.0]])
PROBABILITIES = np.array([[0.25, 0.75, 0.0], [0.4, 0.4, 0.2]], dtype=np.float32)


def test_max_softmax_is_the_largest_probability_widened_from_float32() -> None:
    got = max_softmax(PROBABILITIES)
    assert got.dtype == np.float64
    # 0.4 is not a float32 number: the answer is float32(0.4) widened, not 0.4.
    np.testing.assert_array_equal(got, [0.75, float(np.float32(0.4))])
    assert got[1] != 0.4


def test_energy_closed_form() -> None:
    # T = 1: log(sum exp) = log 4 and log 5.
    np.testing.assert_allclose(energy(LOGITS), [math.log(4), math.log(5)])
    # T = 2, logits [0, 2 ln 3]: 2 * log(exp(0) + exp(ln 3)) = 2 log 4.
    np.testing.assert_allclose(
        energy(np.array([[0.0, 2 * LN3]]), temperature=2.0), [2 * math.log(4)]
    )


def test_energy_is_numerically_stable_and_shifts() -> None:
    big = np.array([[1000.0, 1000.0], [-1000.0, -1000.0]])
    # logsumexp(c, c) = c + log 2, whatever c is.
    np.testing.assert_allclose(energy(big), [1000 + LN2, -1000 + LN2])
    # A row of -inf logits has zero total mass: log 0 = -inf, not nan.
    assert energy(np.array([[-np.inf, -np.inf]]))[0] == -np.inf
    x = np.random.default_rng(0).normal(size=(5, 7))
    np.testing.assert_allclose(energy(x + 12.5), energy(x) + 12.5)


def test_compute_score_reads_the_named_outputs() -> None:
    outputs = {
        "logits": LOGITS,
        "probabilities": PROBABILITIES,
        "reachability": np.array([2.0, 0.5], dtype=np.float32),
    }
    np.testing.assert_array_equal(compute_score("reachability", outputs), [2.0, 0.5])
    np.testing.assert_allclose(compute_score("energy", outputs), [math.log(4), math.log(5)])
    np.testing.assert_array_equal(compute_score("max_softmax", outputs), max_softmax(PROBABILITIES))
    assert available_scores(outputs) == OUTPUT_SCORES
    assert available_scores({"logits": LOGITS, "probabilities": PROBABILITIES}) == (
        "max_softmax",
        "energy",
    )


def test_combined_is_the_minimum_of_the_normalised_parts() -> None:
    parts = {"max_softmax": np.array([0.9, 0.5, 0.2]), "reachability": np.array([2.0, 8.0, 1.0])}
    params = {"max_softmax": 0.5, "reachability": 4.0}
    # msp / 0.5 = [1.8, 1.0, 0.4]; reach / 4 = [0.5, 2.0, 0.25]; min = [0.5, 1.0, 0.25]
    np.testing.assert_allclose(combined(parts, params), [0.5, 1.0, 0.25])
    outputs = {
        "probabilities": np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]),
        "reachability": np.array([2.0, 8.0, 8.0]),
    }
    # max_softmax from the probabilities: [0.9, 0.5, 0.8] / 0.5 = [1.8, 1.0, 1.6];
    # reach / 4 = [0.5, 2.0, 2.0]; min = [0.5, 1.0, 1.6]
    np.testing.assert_allclose(compute_score(COMBINED, outputs, params), [0.5, 1.0, 1.6])
    assert reads(COMBINED) == ("probabilities", "reachability")
    with pytest.raises(ValueError, match="needs its params"):
        compute_score(COMBINED, outputs)
    with pytest.raises(ValueError, match=r"positive params for \['reachability'\]"):
        combined(parts, {"max_softmax": 0.5, "reachability": 0.0})


def test_the_decision_rule() -> None:
    # score == threshold is known; below is unknown; NaN is unknown.
    np.testing.assert_array_equal(
        is_known([0.5, 1.0, 1.5, np.nan], 1.0), [False, True, True, False]
    )


def test_a_threshold_must_be_a_value_its_score_can_take() -> None:
    for score, value in [
        ("max_softmax", 0.0),
        ("max_softmax", 1.0),
        ("reachability", 1e6),
        ("combined", 0.95),
        ("energy", -3.5),
    ]:
        assert threshold_problem(score, value) is None, (score, value)
    assert threshold_problem("max_softmax", 1.5) == (
        "threshold for the max_softmax score must be in [0, 1], got 1.5"
    )
    assert threshold_problem("reachability", -0.1) == (
        "threshold for the reachability score must be in [0, inf], got -0.1"
    )
    for value in (math.nan, math.inf, -math.inf):
        assert "finite number" in threshold_problem("energy", value)


def test_higher_means_more_known() -> None:
    confident, flat = [10.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    logits = np.array([confident, flat])
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    outputs = {"logits": logits, "probabilities": probabilities}
    for name in ("max_softmax", "energy"):
        s = compute_score(name, outputs)
        assert s[0] > s[1], name


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown score 'odin'.*reachability, max_softmax, energy"):
        compute_score("odin", {"logits": LOGITS})
    with pytest.raises(ValueError, match=r"'reachability' needs the model output\(s\)"):
        compute_score("reachability", {"logits": LOGITS})
    with pytest.raises(ValueError, match=r"probabilities must have 2 dimension"):
        max_softmax(np.ones(3))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        energy(LOGITS, temperature=0.0)
    with pytest.raises(ValueError, match=r"reachability must have 1 dimension"):
        compute_score("reachability", {"reachability": np.ones((2, 2))})


def test_names_and_definitions() -> None:
    assert SCORE_NAMES == ("reachability", "max_softmax", "energy", "combined")
    assert set(SCORES) == set(OUTPUT_SCORES)
    for name in SCORE_NAMES:
        assert "higher is more known" in score_definition(name)
        assert set(reads(name)) <= set(OUTPUT_NAMES)
    assert "s_r / d_min" in score_definition("reachability")
    assert "logsumexp" in score_definition("energy")


def test_the_service_imports_and_builds_its_app_without_torch() -> None:
    """The service (and the contract it shares with training) must run where torch is absent:
    a blocked ``torch`` import makes any import of it fail."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import service.app, oltr_contract.scores\n"
        "service.app.create_app()\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
