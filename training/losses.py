"""OLTR loss (paper Eq. 7; method notes section 4): ``CE + lambda * (attract + repel)``.

The centroid loss acts on v_direct. Attract: ``0.5 * ||v - c_y||^2``, batch mean. Repel
(project choice, replacing the authors' batch-level hinge that is almost always zero): per-sample
hinge ``max(0, ||v - c_y|| - min_{k != y} ||v - c_k|| + m)``, batch mean. Gradients come from
autograd, so lambda scales the centroid gradient too (the authors' custom backward ignored it).
Training passes detached centroids when they follow the class means instead
(``loss.centroid_update=ema``, :func:`training.engine.follow_class_means`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from training.config import FitConfig
from training.models import OLTROutput
from training.models.meta_embedding import l2_distances, squared_distances


class CentroidLoss(NamedTuple):
    """The centroid loss and its two terms (batch means)."""

    total: Tensor
    attract: Tensor
    repel: Tensor


def centroid_loss(
    features: Tensor, labels: Tensor, centroids: Tensor, margin: float
) -> CentroidLoss:
    """Attract v to its class centroid and keep it ``margin`` closer to it than to any other.

    With a single class there is no other centroid and the repel term is 0.
    """
    attract = 0.5 * squared_distances(features, centroids).gather(1, labels[:, None]).mean()
    if centroids.shape[0] < 2:
        repel = attract.new_zeros(())
    else:
        dist = l2_distances(features, centroids)
        own = F.one_hot(labels, centroids.shape[0]).bool()
        d_own = dist.gather(1, labels[:, None]).squeeze(1)
        d_other = dist.masked_fill(own, torch.inf).min(dim=1).values
        repel = F.relu(d_own - d_other + margin).mean()
    return CentroidLoss(attract + repel, attract, repel)


@dataclass
class LossWeights:
    """How a stage's loss is put together: CE(logits + log_prior_shift) + weight * centroid."""

    centroid_weight: float = 0.0
    margin: float = 0.0
    logit_shift: torch.Tensor | None = None
    """tau * log(class prior), added to the logits inside the training loss only."""
    centroid_ema_rate: float = 0.0
    """> 0: centroids follow the batch class means at this rate (no gradient); 0: by gradient."""

    @classmethod
    def for_stage(
        cls, train_counts: list[int], tau: float, centroid_weight: float = 0.0, margin: float = 0.0
    ) -> LossWeights:
        """Loss weights with the logit adjustment of ``tau`` for these training counts."""
        shift = None
        if tau > 0:
            prior = torch.tensor(train_counts, dtype=torch.float32)
            shift = tau * torch.log(prior / prior.sum())
        return cls(centroid_weight, margin, shift)

    @property
    def centroids_by_gradient(self) -> bool:
        """Whether the centroid memory learns through the loss (else it is not a trained weight)."""
        return self.centroid_weight > 0 and self.centroid_ema_rate == 0

    @classmethod
    def for_oltr(cls, train_counts: list[int], cfg: FitConfig) -> LossWeights:
        """Stage 2 of OLTR: ``cfg.loss``'s centroid loss and update, ``cfg.stage2``'s tau."""
        weights = cls.for_stage(
            train_counts, cfg.stage2.logit_adjust_tau, cfg.loss.centroid_weight, cfg.loss.margin
        )
        if cfg.loss.centroid_update == "ema":
            weights.centroid_ema_rate = cfg.loss.centroid_ema_rate
        return weights


class LossParts(NamedTuple):
    """``total = ce + centroid_weight * centroid``; the parts are for logging."""

    total: Tensor
    ce: Tensor
    centroid: Tensor


def oltr_loss(
    out: OLTROutput, labels: Tensor, centroids: Tensor | None, weights: LossWeights
) -> LossParts:
    """The training loss of one batch: ``CE(logits + logit_shift) + weight * centroid loss``.

    The centroid loss (on v_direct) counts when ``weights.centroid_weight > 0`` and the model
    has centroids (stage "oltr"); with ``centroid_ema_rate > 0`` it sees them detached, since
    they then follow the class means (:func:`training.engine.follow_class_means`) instead of
    the gradient. Computed in float32 (AMP halves are widened first).
    """
    logits = out.logits.float()
    if weights.logit_shift is not None:
        logits = logits + weights.logit_shift.to(logits.device)
    ce = F.cross_entropy(logits, labels)
    if weights.centroid_weight <= 0 or centroids is None:
        return LossParts(ce, ce, ce.new_zeros(()))
    target = centroids.detach() if weights.centroid_ema_rate > 0 else centroids
    centroid = centroid_loss(out.direct.float(), labels, target, weights.margin).total
    return LossParts(ce + weights.centroid_weight * centroid, ce, centroid)
