"""Cached backbone features: exact (to float rounding) for a frozen backbone in eval mode.

A frozen backbone computes the same features every epoch, and on a CPU it is nearly all of the
cost (EfficientNet-Lite0 at 224 px in eager torch: about 0.1 s per image on 2 cores).
``compute_maps`` runs :class:`BackboneFeatures` (``backbone(normalize(x))``, in onnxruntime on
a CPU) once per image; inside :func:`backbone_bypassed` the model takes
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
from typing import Literal

import onnxruntime as ort
import torch
from torch import Tensor, nn
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


Runtime = Literal["auto", "torch", "onnxruntime"]
RUNTIME: Runtime = "auto"
"""What :func:`cached_run_data` computes features with (see :class:`BackboneFeatures`)."""


class _Features(nn.Module):
    def __init__(self, model: OLTRNet, pooled: bool) -> None:
        super().__init__()
        self.normalize, self.backbone, self.pooled = model.normalize, model.backbone, pooled

    def forward(self, x: Tensor) -> Tensor:
        maps = self.backbone(self.normalize(x))
        return maps.mean(dim=(2, 3), keepdim=True) if self.pooled else maps


class BackboneFeatures:
    """``model.backbone(model.normalize(x))`` of a batch, in eval mode (``pooled``: each map's
    spatial mean ``[C, 1, 1]`` only), as float32 on the CPU.

    ``runtime="auto"`` runs it in onnxruntime on a CPU device (exported once, here: on 2
    cores EfficientNet-Lite0 at 224 px ran 7-8 times faster than eager torch, side by side in
    one run, docs/BENCHMARKS.md) and in torch elsewhere; the two agree to float rounding. A
    backbone that does not export falls back to torch, with a warning.
    """

    def __init__(
        self,
        model: OLTRNet,
        device: torch.device,
        *,
        pooled: bool = False,
        runtime: Runtime = "auto",
    ) -> None:
        self.device, self.pooled = device, pooled
        self.module = _Features(model, pooled).eval()
        self.session: ort.InferenceSession | None = None
        if runtime == "onnxruntime" or (runtime == "auto" and device.type == "cpu"):
            self.session = _session(self.module, model.input_size, strict=runtime != "auto")

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"x": images.float().numpy()})[0])
        return self.module(images.to(self.device)).float().cpu()


def _session(module: nn.Module, size: int, *, strict: bool) -> ort.InferenceSession | None:
    example = torch.zeros(2, 3, size, size)  # batch 2: torch.export specialises 0 and 1
    try:
        with torch.random.fork_rng(devices=[]):  # leaves the global RNG (initialisation) alone
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                input_names=["x"],
                dynamic_shapes={"x": {0: torch.export.Dim("N")}},
                opset_version=18,
                verbose=False,
            )
        proto = program.model_proto.SerializeToString()
        return ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    except Exception as err:  # an exporter or runtime limitation: eager torch still works
        if strict:
            raise
        log.warning("the backbone did not export to onnxruntime (%s); features run in torch", err)
        return None


def compute_views(
    features: BackboneFeatures,
    dataset: Dataset,
    *,
    views: int,
    batch_size: int,
    num_workers: int = 0,
) -> ViewMapDataset:
    """``views`` passes of :func:`compute_maps` over an augmenting ``dataset``."""
    passes = [
        compute_maps(
            features,
            dataset,
            batch_size=batch_size,
            desc=f"view {v + 1}/{views}",
            num_workers=num_workers,
        )
        for v in range(views)
    ]
    return ViewMapDataset(torch.stack([p.maps for p in passes]), list(dataset.labels))


def compute_maps(
    features: BackboneFeatures,
    dataset: Dataset,
    *,
    batch_size: int,
    desc: str,
    num_workers: int = 0,
) -> MapDataset:
    """``features`` of every image of ``dataset``."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator(),  # leaves the global RNG (model initialisation) alone
    )
    bar = tqdm(loader, desc=f"features {desc}", leave=False, disable=not dist_utils.is_main())
    chunks = [features(images) for images, _ in bar]
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
    features = BackboneFeatures(model, device, pooled=pooled, runtime=RUNTIME)
    batch, workers = data.batch_size, data.num_workers
    eval_sets: dict[str, Dataset] = {
        name: compute_maps(features, dataset, batch_size=batch, desc=name, num_workers=workers)
        for name, dataset in data.eval_sets.items()
    }
    train = compute_views(features, data.train, views=views, batch_size=batch, num_workers=workers)
    images = sum(len(s) for s in eval_sets.values()) + views * len(data.train)
    log.info(
        "cached the frozen backbone's features of %d images in %.0f s (%s)",
        images,
        time.monotonic() - started,
        "onnxruntime" if features.session is not None else "torch",
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
        if self.views and not (cfg.stage1.freeze_backbone or cfg.stage2.freeze_backbone):
            log.warning(
                "data.cached_views=%d has no effect: neither stage freezes the backbone "
                "(stage1/stage2.freeze_backbone), so its features change every step",
                self.views,
            )

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
