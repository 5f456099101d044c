"""The stage-2 centroid update: hand-computed EMA steps and one real training step each way."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from training.config import ModelConfig, load_config
from training.engine import follow_class_means, train_one_epoch
from training.losses import LossWeights, oltr_loss
from training.models import OLTRNet, build_model

# K=3, D=2. Batch: class 0 at (2,0) and (4,2) -> mean (3,1); class 2 at (0,8) -> mean (0,8);
# class 1 absent.
FEATURES = torch.tensor([[2.0, 0.0], [4.0, 2.0], [0.0, 8.0]])
LABELS = torch.tensor([0, 0, 2])


def test_follow_class_means_hand_values() -> None:
    centroids = torch.tensor([[1.0, 1.0], [5.0, 5.0], [0.0, 0.0]])
    follow_class_means(centroids, FEATURES, LABELS, rate=0.5)
    # c0: (1,1) + 0.5 * ((3,1) - (1,1)) = (2,1); c1 untouched; c2: 0.5 * (0,8) = (0,4)
    expected = torch.tensor([[2.0, 1.0], [5.0, 5.0], [0.0, 4.0]])
    torch.testing.assert_close(centroids, expected)


def test_rate_one_jumps_to_the_batch_means() -> None:
    centroids = torch.full((3, 2), 7.0)
    follow_class_means(centroids, FEATURES, LABELS, rate=1.0)
    torch.testing.assert_close(centroids, torch.tensor([[3.0, 1.0], [7.0, 7.0], [0.0, 8.0]]))


def test_half_precision_features_update_float_centroids() -> None:
    centroids = torch.zeros(3, 2)
    follow_class_means(centroids, FEATURES.half(), LABELS, rate=0.1)
    # c0: 0.1 * (3,1); c2: 0.1 * (0,8)
    torch.testing.assert_close(centroids, torch.tensor([[0.3, 0.1], [0.0, 0.0], [0.0, 0.8]]))
    assert centroids.dtype == torch.float32


def test_for_oltr_reads_the_loss_config() -> None:
    ema = LossWeights.for_oltr([4, 2], load_config(overrides=["loss.centroid_ema_rate=0.25"]))
    assert (ema.centroid_weight, ema.centroid_ema_rate) == (0.01, 0.25)
    assert not ema.centroids_by_gradient
    grad = LossWeights.for_oltr([4, 2], load_config(overrides=["loss.centroid_update=gradient"]))
    assert grad.centroid_ema_rate == 0 and grad.centroids_by_gradient
    off = LossWeights.for_oltr(
        [4, 2], load_config(overrides=["loss.centroid_update=gradient", "loss.centroid_weight=0"])
    )
    assert not off.centroids_by_gradient


def _oltr_model() -> OLTRNet:
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet10"), num_classes=2, input_size=16)
    model.to_oltr()
    model.set_centroids(torch.ones(2, model.feat_dim))
    return model


IMAGES = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
BATCH_LABELS = torch.tensor([0, 1] * 4)


def _one_step(model: OLTRNet, weights: LossWeights, lr: float) -> torch.Tensor:
    """One training step on IMAGES; returns the centroids from before it."""
    loader = DataLoader(TensorDataset(IMAGES, BATCH_LABELS), batch_size=8)
    optimizer = torch.optim.SGD(model.param_groups(lr=lr, centroid_lr=lr), lr=lr)
    before = model.centroids.detach().clone()
    train_one_epoch(model, loader, optimizer, torch.device("cpu"), weights=weights)
    return before


@pytest.mark.parametrize("rate", [0.1, 1.0])
def test_ema_step_moves_centroids_to_the_training_features(rate: float) -> None:
    """With lr 0 only the EMA changes the model, so the new centroids are exactly
    ``c + rate * (class mean - c)`` of the step's train-mode features, whatever lambda is."""
    model = _oltr_model()
    weights = LossWeights(centroid_weight=0.01, margin=1.0, centroid_ema_rate=rate)
    before = _one_step(model, weights, lr=0.0)
    assert model.centroids.grad is None  # the loss saw the centroids detached
    with torch.no_grad():
        feats = model.train().forward_features(IMAGES)  # batch-statistics BN: same features
    labels = BATCH_LABELS
    means = torch.stack([feats[labels == k].mean(0) for k in (0, 1)])
    torch.testing.assert_close(model.centroids.detach(), before + rate * (means - before))


def test_gradient_mode_moves_centroids_by_lambda_times_the_loss() -> None:
    model = _oltr_model()
    before = _one_step(model, LossWeights(centroid_weight=0.01, margin=1.0), lr=0.5)
    assert model.centroids.grad is not None and model.centroids.grad.abs().sum() > 0
    assert not torch.equal(model.centroids.detach(), before)


def test_the_epoch_loss_is_oltr_loss() -> None:
    """train_one_epoch minimises training.losses.oltr_loss, logit shift and all: with lr 0 its
    reported loss equals oltr_loss of the same train-mode batch."""
    model = _oltr_model()
    weights = LossWeights.for_stage([3, 1], tau=1.0, centroid_weight=0.5, margin=1.0)
    loader = DataLoader(TensorDataset(IMAGES, BATCH_LABELS), batch_size=8)
    optimizer = torch.optim.SGD(model.param_groups(lr=0.0, centroid_lr=0.0), lr=0.0)
    result = train_one_epoch(model, loader, optimizer, torch.device("cpu"), weights=weights)
    with torch.no_grad():
        parts = oltr_loss(model.train()(IMAGES), BATCH_LABELS, model.centroids, weights)
    assert result["loss"] == pytest.approx(parts.total.item(), rel=1e-6)
    assert result["centroid_loss"] == pytest.approx(parts.centroid.item(), rel=1e-6)
    assert parts.total.item() > parts.ce.item() > 0
