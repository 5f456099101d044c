"""Cosine classifier with norm squashing (paper Eq. 6; method notes section 3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_EPS = 1e-12


def squash_code(n: Tensor) -> Tensor:
    """g(n) = n / (1 + n), the authors' code."""
    return n / (1 + n)


def squash_paper(n: Tensor) -> Tensor:
    """g(n) = n^2 / (1 + n^2), the paper."""
    n2 = n * n
    return n2 / (1 + n2)


SQUASH: dict[str, Callable[[Tensor], Tensor]] = {"code": squash_code, "paper": squash_paper}


class CosineClassifier(nn.Module):
    """``logits_k = s * g(||v||) * <v/||v||, w_k/||w_k||>``; no bias, every norm guarded."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        scale: float = 16.0,
        squash: Literal["code", "paper"] = "code",
    ) -> None:
        super().__init__()
        self.scale = scale
        self.squash = squash
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, v: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        unit = v / norm.clamp_min(NORM_EPS)
        weight = F.normalize(self.weight, dim=1, eps=NORM_EPS)
        return self.scale * SQUASH[self.squash](norm) * (unit @ weight.t())

    def extra_repr(self) -> str:
        k, d = self.weight.shape
        return f"in_features={d}, num_classes={k}, scale={self.scale}, squash={self.squash!r}"
