"""The training and inference loops: train_one_epoch, predict, class_means, reset_centroids."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training import distributed as dist_utils
from training.losses import LossWeights, oltr_loss
from training.models import OLTRNet


def unwrap(model: nn.Module) -> OLTRNet:
    """The OLTRNet inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA, nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    weights: LossWeights,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; returns mean loss, centroid loss and training accuracy."""
    model.train()
    totals = {"loss": 0.0, "centroid_loss": 0.0, "correct": 0.0, "seen": 0.0}
    for images, labels in _progress(loader, desc):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        centroids = unwrap(model).centroids
        with autocast(device):
            out = model(images)
            loss = oltr_loss(out, labels, centroids, weights)
        _step(optimizer, loss.total, scaler)
        if weights.centroid_ema_rate > 0 and centroids is not None:
            follow_class_means(centroids, out.direct.detach(), labels, weights.centroid_ema_rate)
        n = labels.numel()
        totals["loss"] += loss.total.item() * n
        totals["centroid_loss"] += loss.centroid.item() * n
        totals["correct"] += (out.logits.argmax(1) == labels).sum().item()
        totals["seen"] += n
    sums = dist_utils.all_reduce_sum(torch.tensor(list(totals.values()), dtype=torch.float64))
    loss_sum, c_sum, correct, seen = sums.tolist()
    seen = max(seen, 1.0)
    return {"loss": loss_sum / seen, "centroid_loss": c_sum / seen, "train_acc": correct / seen}


@torch.no_grad()
def follow_class_means(
    centroids: torch.Tensor, features: torch.Tensor, labels: torch.Tensor, rate: float
) -> None:
    """Move each centroid ``rate`` of the way to its class's mean feature in this batch.

    ``c_k <- c_k + rate * (mean_k - c_k)`` for every class k in the batch (summed across ranks
    first, so every rank applies the same update); absent classes keep their centroid.
    """
    sums, counts = _class_sums(features, labels, centroids.shape[0])
    sums, counts = dist_utils.all_reduce_sum(sums), dist_utils.all_reduce_sum(counts)
    present = counts > 0
    means = sums[present] / counts[present, None]
    centroids[present] += (rate * (means - centroids[present].double())).to(centroids.dtype)


def _step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, scaler: torch.amp.GradScaler | None
) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "predict"):
    """Run ``model`` over ``loader`` in eval mode; returns numpy arrays of every output under
    the ONNX artifact's names (see :meth:`OLTROutput.artifact_outputs`) plus ``labels``."""
    net = unwrap(model).eval()
    chunks: dict[str, list[np.ndarray]] = {}
    for images, labels in _progress(loader, desc):
        fields = net(images.to(device)).artifact_outputs() | {"labels": labels}
        for key, value in fields.items():
            chunks.setdefault(key, []).append(value.cpu().numpy())
    return {key: np.concatenate(parts) for key, parts in chunks.items()}


@torch.no_grad()
def class_means(
    model: nn.Module, loader: DataLoader, num_classes: int, device: torch.device
) -> torch.Tensor:
    """Mean direct feature of each class over ``loader`` (summed across ranks); [K, D]."""
    net = unwrap(model).eval()
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for images, labels in _progress(loader, "centroids"):
        feats = net.forward_features(images.to(device))
        batch_sums, batch_counts = _class_sums(feats, labels.to(device), num_classes)
        sums = batch_sums if sums is None else sums + batch_sums
        counts += batch_counts
    if sums is None:
        raise ValueError("cannot compute class means: the loader yielded no images")
    sums, counts = dist_utils.all_reduce_sum(sums), dist_utils.all_reduce_sum(counts)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"no training features for class indices {empty}")
    return (sums / counts[:, None]).float()


def _class_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class feature sums [K, D] and counts [K] of one batch, in float64 (this rank only)."""
    sums = features.new_zeros(num_classes, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels, features.double())
    return sums, torch.bincount(labels, minlength=num_classes).double()


def reset_centroids(
    model: nn.Module, loader: DataLoader, device: torch.device, *, start: bool = False
) -> None:
    """Set the centroid memory to the class means of the direct features over ``loader``;
    ``start=True`` (the start of stage 2) also imprints the classifier when configured."""
    net = unwrap(model)
    means = class_means(net, loader, net.num_classes, device)
    if start:
        net.start_head(means)
    else:
        net.set_centroids(means)


def _progress(loader: DataLoader, desc: str) -> Iterator:
    return tqdm(
        loader, desc=desc, leave=False, disable=not dist_utils.is_main(), dynamic_ncols=True
    )
