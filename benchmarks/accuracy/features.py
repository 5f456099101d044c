"""Cached backbone feature maps: exact for a frozen backbone in eval mode without augmentation.

``compute_maps`` runs ``backbone(normalize(x))`` once per image; :func:`backbone_bypassed` then
swaps the model's normalisation and backbone for pass-throughs, so every other part of the
project's model and training code (attention, fc_add, heads, run_stage, class_means, predict)
runs unchanged on the cached maps. The heavy backbone is restored when the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.models import OLTRNet


class MapDataset(Dataset):
    """Cached feature maps ``[N, C, H, W]`` and labels; ``labels`` is a list (for samplers)."""

    def __init__(self, maps: Tensor, labels: list[int]) -> None:
        if maps.shape[0] != len(labels):
            raise ValueError(f"{maps.shape[0]} maps but {len(labels)} labels")
        self.maps = maps
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.maps[index], self.labels[index]


class ViewMapDataset(Dataset):
    """Several cached augmented views per image ``[V, N, C, H, W]``; each item is a random view.

    A fixed pool of ``V`` augmentations per image stands in for fresh augmentation every epoch;
    each view is the exact backbone output of its augmented image. The view is drawn with the
    torch generator, so ``torch.manual_seed`` makes the sequence reproducible.
    """

    def __init__(self, views: Tensor, labels: list[int]) -> None:
        if views.ndim < 2 or views.shape[1] != len(labels):
            raise ValueError(f"views must be [V, {len(labels)}, ...], got {tuple(views.shape)}")
        self.views = views
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        view = int(torch.randint(self.views.shape[0], ()))
        return self.views[view, index], self.labels[index]


@torch.no_grad()
def compute_views(
    model: OLTRNet,
    dataset: Dataset,
    device: torch.device,
    *,
    views: int,
    batch_size: int,
    num_workers: int = 0,
) -> ViewMapDataset:
    """``views`` passes of :func:`compute_maps` over an augmenting ``dataset``."""
    passes = [
        compute_maps(
            model,
            dataset,
            device,
            batch_size=batch_size,
            desc=f"view {v + 1}/{views}",
            num_workers=num_workers,
        )
        for v in range(views)
    ]
    return ViewMapDataset(torch.stack([p.maps for p in passes]), list(dataset.labels))


@torch.no_grad()
def compute_maps(
    model: OLTRNet,
    dataset: Dataset,
    device: torch.device,
    *,
    batch_size: int,
    desc: str,
    num_workers: int = 0,
) -> MapDataset:
    """``model.backbone(model.normalize(x))`` for every image of ``dataset``, in eval mode."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks = []
    for images, _ in tqdm(loader, desc=f"features {desc}", leave=False, dynamic_ncols=True):
        chunks.append(model.backbone(model.normalize(images.to(device))).float().cpu())
    return MapDataset(torch.cat(chunks), list(dataset.labels))


class _PassThrough(nn.Module):
    """Stands in for the backbone: returns its input; keeps the shape attributes."""

    def __init__(self, out_channels: int, feature_size: tuple[int, int]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.feature_size = feature_size

    def forward(self, x: Tensor) -> Tensor:
        return x


@contextmanager
def backbone_bypassed(model: OLTRNet) -> Iterator[OLTRNet]:
    """Inside the block ``model`` takes cached feature maps instead of images.

    Call :meth:`OLTRNet.to_oltr` before entering (it needs the real backbone's parameters).
    """
    backbone, normalize = model.backbone, model.normalize
    model.backbone = _PassThrough(backbone.out_channels, tuple(backbone.feature_size))
    model.normalize = nn.Identity()
    try:
        yield model
    finally:
        model.backbone, model.normalize = backbone, normalize
