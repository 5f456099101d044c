"""Cached backbone features: exact for a frozen backbone in eval mode.

A frozen backbone computes the same features every epoch, and on a CPU it is nearly all of the
cost (EfficientNet-Lite at 224 px: about a second per image on 2 cores). ``compute_maps`` runs
``backbone(normalize(x))`` once per image; inside :func:`backbone_bypassed` the model takes
those maps instead of images, so every other part of the model and training code (attention,
fc_add, heads, run_stage, class_means, predict, evaluate_model) runs unchanged on them. The
modules themselves stay in place, so checkpoints keep the backbone's weights.

Augmentation becomes a fixed pool: ``compute_views`` caches a few augmented views of each
training image and each item is a random one of them. ``pooled=True`` keeps only the spatial
mean ``[C, 1, 1]`` of each map: exact whenever nothing between the backbone and the global
average pool looks at the map (no modulated attention), and 49 times smaller at 7x7.
:func:`cached_run_data` caches every set of a run this way; :class:`FeatureCache` is how
``training.fit`` uses it (``data.cached_views``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training import distributed as dist_utils
from training.config import FitConfig
from training.models import OLTRNet
from training.run_data import RunData

log = logging.getLogger(__name__)


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
        count = self.views.shape[0]
        view = int(torch.randint(count, ())) if count > 1 else 0  # one view: no draw
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
    pooled: bool = False,
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
            pooled=pooled,
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
    pooled: bool = False,
) -> MapDataset:
    """``model.backbone(model.normalize(x))`` for every image of ``dataset``, in eval mode;
    ``pooled`` keeps each map's spatial mean ``[C, 1, 1]`` only."""
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator(),  # leaves the global RNG (model initialisation) alone
    )
    chunks = []
    bar = tqdm(loader, desc=f"features {desc}", leave=False, disable=not dist_utils.is_main())
    for images, _ in bar:
        maps = model.backbone(model.normalize(images.to(device))).float()
        chunks.append((maps.mean(dim=(2, 3), keepdim=True) if pooled else maps).cpu())
    return MapDataset(torch.cat(chunks), list(dataset.labels))


def _identity(x: Tensor) -> Tensor:
    return x


@contextmanager
def backbone_bypassed(model: OLTRNet) -> Iterator[OLTRNet]:
    """Inside the block ``model`` takes cached feature maps instead of images.

    The backbone and the input normalisation stay in the model (their weights stay in its
    state_dict and checkpoints); only their ``forward`` passes the input through.
    """
    modules = (model.backbone, model.normalize)
    for module in modules:
        module.forward = _identity  # type: ignore[method-assign]  # an instance attribute
    try:
        yield model
    finally:
        for module in modules:
            del module.forward


def cached_run_data(
    model: OLTRNet, data: RunData, device: torch.device, *, views: int, pooled: bool
) -> RunData:
    """``data`` with every set replaced by ``model``'s cached backbone features: ``views``
    augmented views of each training image and one clean pass over each evaluation set."""
    started = time.monotonic()
    batch = data.batch_size
    eval_sets: dict[str, Dataset] = {
        name: compute_maps(
            model,
            dataset,
            device,
            batch_size=batch,
            desc=name,
            num_workers=data.num_workers,
            pooled=pooled,
        )
        for name, dataset in data.eval_sets.items()
    }
    train = compute_views(
        model,
        data.train,
        device,
        views=views,
        batch_size=batch,
        num_workers=data.num_workers,
        pooled=pooled,
    )
    images = sum(len(s) for s in eval_sets.values()) + views * len(data.train)
    log.info(
        "cached the frozen backbone's features of %d images in %.0f s",
        images,
        time.monotonic() - started,
    )
    # In-memory tensors: worker processes would only copy them.
    return RunData(data.class_names, data.train_counts, train, eval_sets, batch, num_workers=0)


class FeatureCache:
    """``data.cached_views``: a stage with a frozen backbone trains and evaluates on the
    backbone's features computed once (:func:`cached_run_data`), not on the images."""

    def __init__(self, cfg: FitConfig, data: RunData, device: torch.device) -> None:
        self.views = cfg.data.cached_views
        self.pooled = not cfg.model.attention  # nothing else looks at the map before pooling
        self.data, self.device = data, device
        self._cached: RunData | None = None
        self._reusable = cfg.stage1.freeze_backbone  # stage 2 then sees the same backbone

    @contextmanager
    def on(self, model: OLTRNet, frozen: bool) -> Iterator[RunData]:
        """The run's data for a stage of ``model``: cached features (with the backbone
        bypassed inside the block) when the stage's backbone is frozen and caching is on."""
        if not (frozen and self.views):
            yield self.data
            return
        if self._cached is None or not self._reusable:
            model.to(self.device)
            self._cached = cached_run_data(
                model, self.data, self.device, views=self.views, pooled=self.pooled
            )
        with backbone_bypassed(model):
            yield self._cached
