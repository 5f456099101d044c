"""Dynamic meta-embedding: visual memory, reachability, hallucinator and concept selector.

Method notes section 3 (paper Eqs. 1-4). The centroid memory is an ``nn.Parameter`` named
``centroids`` (saved in state_dict, exported as an ONNX constant). The head reads it detached:
it changes only through the stage-2 centroid update (``loss.centroid_update``: an EMA of the
batch class means, or the centroid loss's gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

DIST_EPS = 1e-6


def squared_distances(v: Tensor, centroids: Tensor) -> Tensor:
    """||v_b - c_k||^2 for every pair, [B,K], from the differences (no cancellation error)."""
    return (v.unsqueeze(1) - centroids.unsqueeze(0)).pow(2).sum(dim=-1)


def l2_distances(v: Tensor, centroids: Tensor, eps: float = DIST_EPS) -> Tensor:
    """max(||v_b - c_k||, eps), [B,K]: plain L2, never 0 (finite reach and gradients)."""
    return squared_distances(v, centroids).clamp_min(eps * eps).sqrt()


def cosine_distances(v: Tensor, centroids: Tensor, eps: float = DIST_EPS) -> Tensor:
    """max(1 - cos(v_b, c_k), eps), [B,K] in [eps, 2]: blind to feature norms, never 0.

    A zero vector has cosine 0 to everything (distance 1), not NaN.
    """
    unit_v = v / v.norm(dim=-1, keepdim=True).clamp_min(eps)
    unit_c = centroids / centroids.norm(dim=-1, keepdim=True).clamp_min(eps)
    return (1.0 - unit_v @ unit_c.t()).clamp_min(eps)


ReachMetric = Literal["l2", "cosine"]
DISTANCES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l2": l2_distances,
    "cosine": cosine_distances,
}
"""How d_k, the distance of v_direct to centroid k, is measured (``model.reach_metric``)."""


class MetaOutput(NamedTuple):
    """What the meta-embedding head computes from v_direct."""

    meta: Tensor  # v_meta [B,D]
    reach: Tensor  # s_r / d_min [B]
    min_dist: Tensor  # d_min [B]
    nearest: Tensor  # argmin_k d_k [B] int64


class MetaEmbedding(nn.Module):
    """``v_meta = reach * (v_direct + e * v_memory)`` with the terms switchable by config.

    ``d_k = ||v - c_k||`` (``metric="l2"``) or ``1 - cos(v, c_k)`` (``"cosine"``), ``d_min =
    min_k d_k`` (clamped >= eps), ``reach = s_r / d_min``,
    ``o = softmax(T_hal v)``, ``v_memory = o @ M``, ``e = tanh(T_sel v)``. With ``memory`` off
    the memory term is dropped; with ``reach_scaling`` off v_meta is not scaled (reach is still
    returned for open-set scoring).
    """

    def __init__(
        self,
        feat_dim: int,
        num_classes: int,
        *,
        reach_scale: float = 10.0,
        memory: bool = True,
        reach_scaling: bool = True,
        metric: ReachMetric = "l2",
    ) -> None:
        super().__init__()
        if metric not in DISTANCES:
            raise ValueError(f"unknown reach metric {metric!r}; choose one of {sorted(DISTANCES)}")
        self.reach_scale = reach_scale
        self.metric = metric
        self.memory = memory
        self.reach_scaling = reach_scaling
        self.centroids = nn.Parameter(torch.zeros(num_classes, feat_dim))
        self.fc_hallucinator = nn.Linear(feat_dim, num_classes)  # T_hal
        self.fc_selector = nn.Linear(feat_dim, feat_dim)  # T_sel

    def forward(self, v: Tensor) -> MetaOutput:
        centroids = self.centroids.detach()
        min_dist, nearest = DISTANCES[self.metric](v, centroids).min(dim=1)
        reach = self.reach_scale / min_dist
        meta = v
        if self.memory:
            v_memory = torch.softmax(self.fc_hallucinator(v), dim=1) @ centroids
            meta = v + torch.tanh(self.fc_selector(v)) * v_memory
        if self.reach_scaling:
            meta = reach.unsqueeze(1) * meta
        return MetaOutput(meta, reach, min_dist, nearest)

    def extra_repr(self) -> str:
        k, d = self.centroids.shape
        return (
            f"feat_dim={d}, num_classes={k}, reach_scale={self.reach_scale}, "
            f"memory={self.memory}, reach_scaling={self.reach_scaling}, metric={self.metric!r}"
        )
