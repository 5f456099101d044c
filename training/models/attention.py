"""Modulated attention on the last feature map (paper Eq. 5; method notes section 2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ModulatedAttention(nn.Module):
    """``f_att = f + sa * mask``: non-local self-attention modulated by a spatial softmax.

    SA (embedded Gaussian): theta, phi, g are 1x1 convs C -> C/2 with bias;
    ``A = softmax(theta^T phi)`` over the HW positions (no 1/sqrt(d) scaling, as the authors'
    code); ``mask = conv_mask(A g)`` with conv_mask C/2 -> C, no bias, zero-initialised so the
    layer is the identity at start. MA: ``sa = softmax(Linear(HW*C -> HW)(flatten(f)))`` over
    positions, broadcast over channels. H and W are fixed when the layer is built.
    """

    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.size = (height, width)
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.conv_mask = nn.Conv2d(inner, channels, kernel_size=1, bias=False)
        self.fc_spatial = nn.Linear(height * width * channels, height * width)
        for conv in (self.theta, self.phi, self.g):
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_mask.weight)

    def forward(self, f: Tensor) -> Tensor:
        if tuple(f.shape[-2:]) != self.size:
            raise ValueError(
                f"ModulatedAttention was built for {self.size} feature maps, got "
                f"{tuple(f.shape[-2:])}: the model's input size is fixed when it is built"
            )
        theta = self.theta(f).flatten(2).transpose(1, 2)  # [B, HW, C/2]
        phi = self.phi(f).flatten(2)  # [B, C/2, HW]
        g = self.g(f).flatten(2).transpose(1, 2)  # [B, HW, C/2]
        attn = torch.softmax(theta @ phi, dim=-1)  # [B, HW(query), HW(key)]
        y = (attn @ g).transpose(1, 2).unflatten(2, self.size)  # [B, C/2, H, W]
        mask = self.conv_mask(y)
        sa = torch.softmax(self.fc_spatial(f.flatten(1)), dim=1).unflatten(1, (1, *self.size))
        return f + sa * mask
