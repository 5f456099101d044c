"""The centroid loss and the training loss train_one_epoch uses: hand-computed values and
gradients (logit shift, detached EMA centroids, lambda)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import LossWeights, centroid_loss, oltr_loss
from training.models import OLTROutput

# K=3, D=2: c0=(0,0), c1=(3,0), c2=(0,4).
CENTROIDS = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
# Sample a: v=(1,0), y=0: d = (1, 2, sqrt 17); attract 0.5*1 = 0.5; nearest other: 2.
# Sample b: v=(3,1), y=2: d = (sqrt 10, 1, sqrt 18); attract 0.5*18 = 9; nearest other: 1.
FEATURES = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
LABELS = torch.tensor([0, 2])
SQRT18 = math.sqrt(18.0)


@pytest.mark.parametrize(
    ("margin", "repel"),
    [
        # a: max(0, 1 - 2 + 1) = 0 (hinge inactive); b: max(0, sqrt18 - 1 + 1) = sqrt18 (active)
        (1.0, SQRT18 / 2),
        # a: max(0, 1 - 2 + 2) = 1; b: sqrt18 + 1
        (2.0, (1.0 + SQRT18 + 1.0) / 2),
        # a: 0; b: max(0, sqrt18 - 1 + 0) = sqrt18 - 1
        (0.0, (SQRT18 - 1.0) / 2),
    ],
)
def test_centroid_loss_hand_values(margin: float, repel: float) -> None:
    loss = centroid_loss(FEATURES, LABELS, CENTROIDS, margin)
    assert loss.attract.item() == pytest.approx((0.5 + 9.0) / 2)
    assert loss.repel.item() == pytest.approx(repel)
    assert loss.total.item() == pytest.approx(4.75 + repel)


def test_repel_is_zero_when_every_sample_is_margin_closer() -> None:
    # v=(0.5,0), y=0: d = (0.5, 2.5, sqrt 16.25); 0.5 - 2.5 + 1 < 0
    loss = centroid_loss(torch.tensor([[0.5, 0.0]]), torch.tensor([0]), CENTROIDS, 1.0)
    assert loss.repel.item() == 0.0
    assert loss.attract.item() == pytest.approx(0.125)


def test_single_class_has_no_repel() -> None:
    loss = centroid_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([0]), torch.zeros(1, 2), 1.0)
    assert loss.repel.item() == 0.0 and loss.attract.item() == pytest.approx(2.5)


def test_centroid_loss_gradients_by_hand() -> None:
    centroids = CENTROIDS.clone().requires_grad_(True)
    features = FEATURES.clone().requires_grad_(True)
    centroid_loss(features, LABELS, centroids, 1.0).total.backward()
    # attract = mean_b 0.5 ||v_b - c_yb||^2: d/dc_y = -(v - c_y)/B.
    #   c0 gets -(1,0)/2 from a; c2 gets -((3,1) - (0,4))/2 = (-1.5, 1.5) from b.
    # repel (only b active) = (||v_b - c2|| - ||v_b - c1|| + 1)/2:
    #   d/dc2 = -(v_b - c2)/(2 ||v_b - c2||) = -(3,-3)/(2 sqrt18)
    #   d/dc1 = +(v_b - c1)/(2 ||v_b - c1||) = (0,1)/2
    u = 1.0 / (2 * SQRT18)
    expected = torch.tensor([[-0.5, 0.0], [0.0, 0.5], [-1.5 - 3 * u, 1.5 + 3 * u]])
    torch.testing.assert_close(centroids.grad, expected)
    # d/dv_b = (v_b - c2)/2 + (v_b - c2)/(2 sqrt18) - (v_b - c1)/2
    expected_vb = torch.tensor([1.5 + 3 * u, -1.5 - 3 * u - 0.5])
    torch.testing.assert_close(features.grad[1], expected_vb)


def _output(logits: torch.Tensor, direct: torch.Tensor) -> OLTROutput:
    return OLTROutput(logits=logits, direct=direct)


LOGITS = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
# CE a: -log(e^2 / (e^2 + 2)); b: -log(e^3 / (1 + e + e^3))
CE_A = -math.log(math.exp(2) / (math.exp(2) + 2))
CE_B = -math.log(math.exp(3) / (1 + math.e + math.exp(3)))
CENTROID = 4.75 + SQRT18 / 2  # attract + repel at margin 1 (test_centroid_loss_hand_values)


def test_total_loss_is_ce_plus_weighted_centroid_loss() -> None:
    weights = LossWeights(centroid_weight=0.1, margin=1.0)
    parts = oltr_loss(_output(LOGITS, FEATURES), LABELS, CENTROIDS, weights)
    assert parts.ce.item() == pytest.approx((CE_A + CE_B) / 2)
    assert parts.centroid.item() == pytest.approx(CENTROID)
    assert parts.total.item() == pytest.approx((CE_A + CE_B) / 2 + 0.1 * CENTROID)


def test_logit_shift_enters_the_cross_entropy() -> None:
    # counts (2, 1, 1), tau 1: shift = log(0.5, 0.25, 0.25). Sample a (label 0):
    # p0 = 0.5 e^2 / (0.5 e^2 + 0.25 + 0.25) = e^2 / (e^2 + 1), CE = log(1 + e^-2).
    # Sample b (label 2): p2 = 0.25 e^3 / (0.5 + 0.25 e + 0.25 e^3), CE = log((2 + e + e^3) / e^3)
    weights = LossWeights.for_stage([2, 1, 1], tau=1.0)
    parts = oltr_loss(_output(LOGITS, FEATURES), LABELS, None, weights)
    ce_a = math.log(1 + math.exp(-2))
    ce_b = math.log((2 + math.e + math.exp(3)) / math.exp(3))
    assert parts.total.item() == pytest.approx((ce_a + ce_b) / 2)
    unshifted = oltr_loss(_output(LOGITS, FEATURES), LABELS, None, LossWeights())
    assert unshifted.total.item() == pytest.approx((CE_A + CE_B) / 2)


@pytest.mark.parametrize(
    "weights",
    [LossWeights(centroid_weight=0.0), LossWeights(centroid_weight=0.1, margin=1.0)],
    ids=["lambda0", "plain-model"],
)
def test_without_centroid_term_the_loss_is_cross_entropy(weights: LossWeights) -> None:
    centroids = None if weights.centroid_weight else CENTROIDS  # plain model: no centroids
    parts = oltr_loss(_output(LOGITS, FEATURES), LABELS, centroids, weights)
    torch.testing.assert_close(parts.total, F.cross_entropy(LOGITS, LABELS))
    assert parts.centroid.item() == 0.0


def test_ema_centroids_get_no_gradient_but_the_features_do() -> None:
    centroids = CENTROIDS.clone().requires_grad_(True)
    features = FEATURES.clone().requires_grad_(True)
    weights = LossWeights(centroid_weight=0.1, margin=1.0, centroid_ema_rate=0.5)
    parts = oltr_loss(_output(LOGITS, features), LABELS, centroids, weights)
    parts.total.backward()
    assert centroids.grad is None
    # 0.1 * d/dv_b of the centroid loss (test_centroid_loss_gradients_by_hand); CE has no v
    u = 1.0 / (2 * SQRT18)
    expected_vb = 0.1 * torch.tensor([1.5 + 3 * u, -1.5 - 3 * u - 0.5])
    torch.testing.assert_close(features.grad[1], expected_vb)


def test_lambda_scales_the_centroid_gradient() -> None:
    """Autograd, no custom backward: the centroid gradient is exactly lambda times the
    centroid-loss gradient (the authors' code ignored the weight there)."""
    grads = {}
    for weight in (0.01, 0.1):
        centroids = CENTROIDS.clone().requires_grad_(True)
        weights = LossWeights(centroid_weight=weight, margin=1.0)
        oltr_loss(_output(LOGITS, FEATURES), LABELS, centroids, weights).total.backward()
        grads[weight] = centroids.grad
    torch.testing.assert_close(grads[0.1], 10 * grads[0.01])
    unweighted = CENTROIDS.clone().requires_grad_(True)
    centroid_loss(FEATURES, LABELS, unweighted, 1.0).total.backward()
    torch.testing.assert_close(grads[0.01], 0.01 * unweighted.grad)


def test_loss_is_finite_when_features_sit_on_centroids() -> None:
    centroids = torch.zeros(3, 4, requires_grad=True)
    features = torch.zeros(2, 4, requires_grad=True)
    loss = centroid_loss(features, torch.tensor([0, 1]), centroids, 1.0)
    loss.total.backward()
    assert loss.repel.item() == pytest.approx(1.0)  # all distances equal: hinge = margin
    assert torch.isfinite(centroids.grad).all() and torch.isfinite(features.grad).all()
