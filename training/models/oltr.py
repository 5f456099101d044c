"""The OLTR network: backbone, optional modulated attention, direct feature and the two heads.

Stage "plain" (stage 1, as the authors' code): normalise -> backbone -> GAP -> Linear(C, K).
Stage "oltr" (stage 2, :meth:`OLTRNet.to_oltr`): normalise -> backbone -> modulated attention ->
GAP -> fc_add (Linear(C, D) + ReLU) -> meta-embedding -> cosine classifier.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from training.config import ModelConfig

from ._registry import create_backbone
from .attention import ModulatedAttention
from .backbone import InputNorm
from .classifiers import CosineClassifier
from .meta_embedding import MetaEmbedding

Stage = Literal["plain", "oltr"]


class OLTROutput(NamedTuple):
    """Model outputs; reach, min_dist and nearest are None for stage "plain"."""

    logits: Tensor  # [B,K]
    direct: Tensor  # v_direct [B,D]
    reach: Tensor | None = None  # s_r / d_min [B]
    min_dist: Tensor | None = None  # d_min [B]
    nearest: Tensor | None = None  # nearest centroid's class [B] int64

    def artifact_outputs(self) -> dict[str, Tensor]:
        """The outputs under the ONNX artifact's names (:mod:`oltr_contract.artifact`), float32:
        what the export graph returns and what evaluation scores. A plain model has only
        logits, probabilities and embedding."""
        logits = self.logits.float()
        outputs = {"logits": logits, "probabilities": torch.softmax(logits, dim=1)}
        if self.reach is not None and self.min_dist is not None and self.nearest is not None:
            outputs |= {
                "reachability": self.reach.float(),
                "distance": self.min_dist.float(),
                "nearest_class": self.nearest,
            }
        return outputs | {"embedding": self.direct.float()}


class OLTRNet(nn.Module):
    """OLTR on [0,1] float images [B,3,S,S]; normalisation is a module inside (ONNX carries it)."""

    def __init__(
        self, cfg: ModelConfig, num_classes: int, input_size: int, *, load_pretrained: bool = True
    ) -> None:
        super().__init__()
        self._backbone_frozen = False
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg = cfg.model_copy()
        self.num_classes = num_classes
        self.input_size = input_size
        self.small_input = cfg.small_input if cfg.small_input is not None else input_size <= 64
        self.backbone = create_backbone(
            cfg.backbone, input_size=input_size, small_input=self.small_input
        )
        if load_pretrained and cfg.pretrained:
            self.backbone.load_pretrained(cfg.pretrained)
        self.normalize = InputNorm(self.backbone.input_mean, self.backbone.input_std)
        self.attention: nn.Module = nn.Identity()
        self.fc_add: nn.Module = nn.Identity()
        self.classifier: nn.Module = nn.Linear(self.backbone.out_channels, num_classes)
        self.head: MetaEmbedding | None = None
        self.stage: Stage = "plain"

    @property
    def feat_dim(self) -> int:
        """D, the size of v_direct in the current stage."""
        if isinstance(self.fc_add, nn.Sequential):
            return self.fc_add[0].out_features
        return self.backbone.out_channels

    @property
    def centroids(self) -> nn.Parameter | None:
        """The centroid memory [K,D] (stage "oltr"), else None."""
        return None if self.head is None else self.head.centroids

    def forward_features(self, x: Tensor) -> Tensor:
        """v_direct [B,D] from [0,1] images [B,3,S,S]."""
        f = self.attention(self.backbone(self.normalize(x)))
        return self.fc_add(f.mean(dim=(2, 3)))

    def forward_head(self, direct: Tensor) -> OLTROutput:
        """Logits (and reachability, d_min, nearest class in stage "oltr") from v_direct."""
        if self.head is None:
            return OLTROutput(self.classifier(direct), direct)
        meta, reach, min_dist, nearest = self.head(direct)
        return OLTROutput(self.classifier(meta), direct, reach, min_dist, nearest)

    def forward(self, x: Tensor) -> OLTROutput:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def to_oltr(self) -> OLTRNet:
        """Turn the stage-1 plain model into the stage-2 OLTR model in place.

        Adds the modulated attention and fc_add (per config), the meta-embedding head (centroids
        zero until :meth:`set_centroids`) and the cosine classifier. T_hal starts from the plain
        linear classifier when their shapes match (D equals the backbone's channels).
        """
        if self.stage != "plain":
            raise RuntimeError(f"to_oltr() needs a stage 'plain' model, this one is {self.stage!r}")
        ref = next(self.backbone.parameters())
        channels, cfg = self.backbone.out_channels, self.cfg
        if cfg.attention:
            self.attention = ModulatedAttention(channels, *self.backbone.feature_size)
        if cfg.fc_add:
            self.fc_add = nn.Sequential(nn.Linear(channels, cfg.feat_dim), nn.ReLU())
        dim = self.feat_dim
        head = MetaEmbedding(
            dim,
            self.num_classes,
            reach_scale=cfg.reach_scale,
            memory=cfg.memory,
            reach_scaling=cfg.reach_scaling,
            metric=cfg.reach_metric,
        )
        plain = self.classifier
        if plain.weight.shape == head.fc_hallucinator.weight.shape:
            head.fc_hallucinator.weight.copy_(plain.weight)
            head.fc_hallucinator.bias.copy_(plain.bias)
        self.head = head
        self.classifier = CosineClassifier(
            dim, self.num_classes, scale=cfg.cosine_scale, squash=cfg.squash
        )
        self.stage = "oltr"
        return self.to(device=ref.device, dtype=ref.dtype)

    @torch.no_grad()
    def set_centroids(self, centroids: Tensor) -> None:
        """Copy class centroids [K,D] into the memory (stage "oltr")."""
        if self.head is None:
            raise RuntimeError("set_centroids() needs a stage 'oltr' model; call to_oltr() first")
        expected = tuple(self.head.centroids.shape)
        if tuple(centroids.shape) != expected:
            raise ValueError(f"centroids must have shape {expected}, got {tuple(centroids.shape)}")
        self.head.centroids.copy_(centroids)

    @torch.no_grad()
    def start_head(self, centroids: Tensor) -> None:
        """Stage 2's starting point: the centroid memory, and with ``classifier_init=centroids``
        the cosine classifier's weights too (then it starts as nearest class mean)."""
        self.set_centroids(centroids)
        if self.cfg.classifier_init == "centroids":
            self.classifier.weight.copy_(centroids)

    def freeze_backbone(self, frozen: bool = True) -> None:
        """Stop (or resume) training the backbone: no gradients, and BatchNorm stays in eval
        mode (running statistics frozen, no batch statistics) even under ``model.train()``."""
        self._backbone_frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            self.backbone.eval()

    def train(self, mode: bool = True) -> OLTRNet:
        """``nn.Module.train``, except that a frozen backbone stays in eval mode."""
        super().train(mode)
        if self._backbone_frozen:
            self.backbone.eval()
        return self

    def param_groups(
        self,
        *,
        lr: float,
        head_lr: float | None = None,
        centroid_lr: float = 0.01,
        weight_decay: float = 0.0,
        freeze_backbone: bool = False,
    ) -> list[dict[str, Any]]:
        """Optimizer groups: backbone (lr), head (head_lr or lr), centroids (centroid_lr, wd 0).

        ``freeze_backbone`` sets requires_grad False on the backbone and leaves its group out;
        attention, fc_add and the heads still train. Each group carries a ``name``.
        """
        self.freeze_backbone(freeze_backbone)
        backbone = list(self.backbone.parameters())
        centroids = self.centroids
        skip = {id(p) for p in backbone} | {id(centroids)}
        head = [p for p in self.parameters() if id(p) not in skip]
        groups = [] if freeze_backbone else [_group("backbone", backbone, lr, weight_decay)]
        groups.append(_group("head", head, lr if head_lr is None else head_lr, weight_decay))
        if centroids is not None:
            groups.append(_group("centroids", [centroids], centroid_lr, 0.0))
        return groups


def _group(name: str, params: list[nn.Parameter], lr: float, decay: float) -> dict[str, Any]:
    return {"name": name, "params": params, "lr": lr, "weight_decay": decay}


def build_model(
    cfg: ModelConfig,
    *,
    num_classes: int,
    input_size: int,
    stage: Stage = "plain",
    load_pretrained: bool = True,
) -> OLTRNet:
    """Build an :class:`OLTRNet` for ``stage``; ``load_pretrained=False`` skips cfg.pretrained
    (use it when a checkpoint's state_dict is loaded next)."""
    if stage not in ("plain", "oltr"):
        raise ValueError(f"stage must be 'plain' or 'oltr', got {stage!r}")
    model = OLTRNet(cfg, num_classes, input_size, load_pretrained=load_pretrained)
    return model.to_oltr() if stage == "oltr" else model
