"""One training stage: optimiser, schedule, loader, epochs and per-epoch checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from training import distributed as dist_utils
from training.checkpoint import save_checkpoint
from training.config import FitConfig, StageConfig
from training.engine import train_one_epoch, unwrap
from training.losses import LossWeights
from training.samplers import ClassAwareSampler

log = logging.getLogger(__name__)


@dataclass
class StageRun:
    """What a stage needs besides its config; ``state`` carries a resumed checkpoint."""

    number: int
    model: nn.Module
    train_set: Dataset
    device: torch.device
    checkpoint_path: Path
    checkpoint_extra: dict[str, Any]
    weights: LossWeights = field(default_factory=LossWeights)
    seed: int = 0
    num_workers: int = 0
    state: dict[str, Any] | None = None
    on_epoch_end: Callable[[int], dict[str, float]] | None = None
    """Called after each epoch with the epoch index; returns extra metrics (e.g. val_acc)."""

    @classmethod
    def for_fit(
        cls,
        number: int,
        cfg: FitConfig,
        model: nn.Module,
        train_set: Dataset,
        device: torch.device,
        checkpoint_path: Path,
        checkpoint_extra: dict[str, Any],
        weights: LossWeights,
        **options: Any,
    ) -> StageRun:
        """Stage ``number`` as ``training.fit`` runs it: seed ``cfg.seed + number - 1``, the
        config's data workers, the model's stage recorded in the checkpoint."""
        return cls(
            number,
            model,
            train_set,
            device,
            checkpoint_path,
            {**checkpoint_extra, "stage": unwrap(model).stage},
            weights=weights,
            seed=cfg.seed + number - 1,
            num_workers=cfg.data.num_workers,
            **options,
        )


def make_optimizer(model: nn.Module, cfg: StageConfig) -> torch.optim.SGD:
    """SGD with momentum over the model's parameter groups (centroids without weight decay)."""
    groups = unwrap(model).param_groups(
        lr=cfg.lr,
        head_lr=cfg.head_lr if cfg.head_lr is not None else cfg.lr,
        centroid_lr=cfg.centroid_lr,
        weight_decay=cfg.weight_decay,
        freeze_backbone=cfg.freeze_backbone,
    )
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: StageConfig):
    """Per-epoch learning-rate schedule: cosine to zero, or step decay."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)


def make_sampler(dataset: Dataset, cfg: StageConfig, seed: int) -> Sampler:
    """Class-aware or shuffled sampling, sharded across ranks under torchrun."""
    if cfg.sampler == "class_aware":
        return ClassAwareSampler(
            dataset.labels,
            n_per_class=cfg.n_per_class,
            batch_size=cfg.batch_size,
            seed=seed,
            rank=dist_utils.rank(),
            num_replicas=dist_utils.world_size(),
        )
    return DistributedSampler(
        dataset,
        num_replicas=dist_utils.world_size(),
        rank=dist_utils.rank(),
        shuffle=True,
        seed=seed,
        drop_last=True,
    )


def run_stage(cfg: StageConfig, run: StageRun) -> list[dict[str, Any]]:
    """Train ``run.model`` for ``cfg.epochs`` epochs; returns this stage's history rows."""
    optimizer = make_optimizer(run.model, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    history: list[dict[str, Any]] = []
    start = 0
    if run.state is not None:
        optimizer.load_state_dict(run.state["optimizer"])
        scheduler.load_state_dict(run.state["scheduler"])
        history, start = list(run.state["history"]), run.state["epoch"] + 1
        log.info("stage %d: resuming at epoch %d/%d", run.number, start + 1, cfg.epochs)
    sampler = make_sampler(run.train_set, cfg, run.seed)
    per_rank_batch = max(cfg.batch_size // dist_utils.world_size(), 1)
    loader = DataLoader(
        run.train_set,
        batch_size=per_rank_batch,
        sampler=sampler,
        num_workers=run.num_workers,
        drop_last=True,
        pin_memory=run.device.type == "cuda",
    )
    if len(loader) == 0:
        raise ValueError(
            f"stage {run.number}: batch_size {cfg.batch_size} exceeds the "
            f"{len(run.train_set)} training images; lower stage{run.number}.batch_size"
        )
    scaler = torch.amp.GradScaler("cuda") if run.device.type == "cuda" else None
    for epoch in range(start, cfg.epochs):
        sampler.set_epoch(epoch)
        row = train_one_epoch(
            run.model,
            loader,
            optimizer,
            run.device,
            weights=run.weights,
            scaler=scaler,
            desc=f"stage {run.number} epoch {epoch + 1}/{cfg.epochs}",
        )
        scheduler.step()
        if run.on_epoch_end is not None:
            row |= run.on_epoch_end(epoch)
        row = {"stage": run.number, "epoch": epoch + 1, **row}
        history.append(row)
        log.info("stage %d epoch %d/%d %s", run.number, epoch + 1, cfg.epochs, _fmt(row))
        _save(run, cfg, epoch, optimizer, scheduler, history)
    return history


def _save(run: StageRun, cfg: StageConfig, epoch, optimizer, scheduler, history) -> None:
    if not dist_utils.is_main():
        return
    save_checkpoint(
        run.checkpoint_path,
        {
            **run.checkpoint_extra,
            "model": unwrap(run.model).state_dict(),
            "epoch": epoch,
            "epochs": cfg.epochs,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
        },
    )


def _fmt(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in row.items() if isinstance(v, float))
