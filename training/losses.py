"""OLTR loss (paper Eq. 7; method notes section 4): ``CE + lambda * (attract + repel)``.

The centroid loss acts on v_direct. Attract: ``0.5 * ||v - c_y||^2``, batch mean. Repel
(project choice, replacing the authors' batch-level hinge that is almost always zero): per-sample
hinge ``max(0, ||v - c_y|| - min_{k != y} ||v - c_k|| + m)``, batch mean. Gradients come from
autograd, so lambda scales the centroid gradient too (the authors' custom backward ignored it).
Training passes detached centroids when they follow the class means instead
(``loss.centroid_update=ema``, :func:`training.engine.follow_class_means`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.models import OLTROutput
from training.models.meta_embedding import l2_distances, squared_distances


class CentroidLoss(NamedTuple):
    """The centroid loss and its two terms (batch means)."""

    total: Tensor
    attract: Tensor
    repel: Tensor


class LossParts(NamedTuple):
    """``total = ce + centroid_weight * centroid``; the parts are for logging."""

    total: Tensor
    ce: Tensor
    centroid: Tensor
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


class OLTRLoss(nn.Module):
    """Cross-entropy on the logits plus ``centroid_weight`` times the centroid loss on v_direct.

    Pass ``centroids=None`` (stage "plain") for cross-entropy alone; the centroid parts are then 0.
    """

    def __init__(self, centroid_weight: float = 0.01, margin: float = 1.0) -> None:
        super().__init__()
        self.centroid_weight = centroid_weight
        self.margin = margin

    def forward(self, out: OLTROutput, labels: Tensor, centroids: Tensor | None) -> LossParts:
        ce = F.cross_entropy(out.logits, labels)
        if centroids is None:
            zero = ce.new_zeros(())
            return LossParts(ce, ce, zero, zero, zero)
        cent = centroid_loss(out.direct, labels, centroids, self.margin)
        total = ce + self.centroid_weight * cent.total
        return LossParts(total, ce, cent.total, cent.attract, cent.repel)

    def extra_repr(self) -> str:
        return f"centroid_weight={self.centroid_weight}, margin={self.margin}"
