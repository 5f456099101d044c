"""Centroid loss and the total OLTR loss: hand-computed values and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import OLTRLoss, centroid_loss
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


def test_total_loss_is_ce_plus_weighted_centroid_loss() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    parts = OLTRLoss(centroid_weight=0.1, margin=1.0)(_output(logits, FEATURES), LABELS, CENTROIDS)
    # CE a: -log(e^2 / (e^2 + 2)); b: -log(e^3 / (1 + e + e^3))
    ce_a = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce_b = -math.log(math.exp(3) / (1 + math.e + math.exp(3)))
    centroid = 4.75 + SQRT18 / 2
    assert parts.ce.item() == pytest.approx((ce_a + ce_b) / 2)
    assert parts.centroid.item() == pytest.approx(centroid)
    assert parts.total.item() == pytest.approx((ce_a + ce_b) / 2 + 0.1 * centroid)
    assert parts.attract.item() == pytest.approx(4.75)
    assert parts.repel.item() == pytest.approx(SQRT18 / 2)


def test_plain_stage_loss_is_cross_entropy() -> None:
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 1])
    parts = OLTRLoss()(_output(logits, torch.randn(4, 2)), labels, None)
    torch.testing.assert_close(parts.total, F.cross_entropy(logits, labels))
    assert parts.centroid.item() == 0.0


def test_lambda_scales_the_centroid_gradient() -> None:
    """Autograd, no custom backward: the centroid gradient is exactly lambda times the
    centroid-loss gradient (the authors' code ignored the weight there)."""
    logits = torch.randn(2, 3)
    grads = {}
    for weight in (0.01, 0.1):
        centroids = CENTROIDS.clone().requires_grad_(True)
        OLTRLoss(weight, 1.0)(_output(logits, FEATURES), LABELS, centroids).total.backward()
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
