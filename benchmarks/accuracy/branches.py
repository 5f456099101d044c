"""Training steps of the benchmark, built from the project's own training code.

Stage 1 and the OLTR stage 2 follow ``training.fit`` step by step (build_model, run_stage with
LossWeights.for_stage; to_oltr, class-mean centroids from the training images with the eval
transform, run_stage with the centroid loss, optional recomputed centroids), each stage set up
by fit's own ``StageRun.for_fit``. They are composed here rather than called through ``fit`` so
that several methods can branch from one stage-1 model and so that a frozen backbone can train
on cached feature maps
(:mod:`training.feature_cache`). Stage-1 checkpoints use fit's layout and content, so
``fit(cfg, run_dir, resume=True)`` accepts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from training.checkpoint import load_checkpoint
from training.config import FitConfig, StageConfig
from training.engine import reset_centroids
from training.losses import LossWeights
from training.models import OLTRNet
from training.stages import StageRun, run_stage


def checkpoint_extra(
    cfg: FitConfig, class_names: list[str], train_counts: list[int], stage: str
) -> dict[str, Any]:
    """The non-weight fields of a checkpoint, as training.fit writes them."""
    return {
        "config": cfg.model_dump(mode="json"),
        "class_names": list(class_names),
        "train_counts": list(train_counts),
        "stage": stage,
    }


def _frozen(stage: StageConfig, cached: bool) -> StageConfig:
    # On cached maps the backbone does not run: it must not train either.
    return stage.model_copy(update={"freeze_backbone": True}) if cached else stage


def _workers(cfg: FitConfig, cached: bool) -> int:
    # Cached maps are in-memory tensors: worker processes would only copy them.
    return 0 if cached else cfg.data.num_workers


def train_stage1(
    model: OLTRNet,
    train_set: Dataset,
    cfg: FitConfig,
    device: torch.device,
    checkpoint: Path,
    extra: dict[str, Any],
    *,
    cached: bool = False,
) -> list[dict[str, Any]]:
    """Stage 1 (the plain model); resumes from ``checkpoint`` when a previous run left one."""
    state = load_checkpoint(checkpoint) if checkpoint.is_file() else None
    if state is not None:
        model.load_state_dict(state["model"])
        if state["epoch"] + 1 >= cfg.stage1.epochs:
            return list(state["history"])
    weights = LossWeights.for_stage(extra["train_counts"], cfg.stage1.logit_adjust_tau)
    run = StageRun.for_fit(
        1, cfg, model, train_set, device, checkpoint, extra, weights, state=state
    )
    return run_stage(_frozen(cfg.stage1, cached), run)


def train_classifier(
    model: OLTRNet,
    train_set: Dataset,
    cfg: FitConfig,
    device: torch.device,
    checkpoint: Path,
    extra: dict[str, Any],
    *,
    reinit: bool,
    cached: bool,
) -> list[dict[str, Any]]:
    """Train the plain model's linear classifier further with ``cfg.stage2``'s optimisation.

    With ``reinit`` the classifier starts from a fresh initialisation (cRT). On cached maps only
    the classifier trains; on images the backbone trains too unless stage2.freeze_backbone.
    """
    if model.stage != "plain":
        raise ValueError("train_classifier needs a stage 'plain' model")
    if reinit:
        model.classifier.reset_parameters()
    weights = LossWeights.for_stage(extra["train_counts"], cfg.stage2.logit_adjust_tau)
    run = StageRun.for_fit(2, cfg, model, train_set, device, checkpoint, extra, weights)
    return run_stage(_frozen(cfg.stage2, cached), run)


def init_centroids(
    model: OLTRNet,
    train_eval: Dataset,
    device: torch.device,
    batch: int,
    workers: int = 0,
    *,
    start: bool = False,
) -> None:
    """Centroids = class means of the direct features of the training images (eval mode);
    ``start``: the start of stage 2 (the classifier is imprinted when configured)."""
    loader = DataLoader(train_eval, batch_size=batch, shuffle=False, num_workers=workers)
    reset_centroids(model, loader, device, start=start)


def train_oltr(
    model: OLTRNet,
    train_set: Dataset,
    train_eval: Dataset,
    cfg: FitConfig,
    device: torch.device,
    checkpoint: Path,
    extra: dict[str, Any],
    *,
    cached: bool,
) -> list[dict[str, Any]]:
    """OLTR stage 2 on a model that :meth:`OLTRNet.to_oltr` has already converted."""
    if model.stage != "oltr":
        raise ValueError("train_oltr needs a stage 'oltr' model (call to_oltr first)")
    init_centroids(
        model, train_eval, device, cfg.eval.batch_size, _workers(cfg, cached), start=True
    )
    weights = LossWeights.for_oltr(extra["train_counts"], cfg)
    run = StageRun.for_fit(2, cfg, model, train_set, device, checkpoint, extra, weights)
    history = run_stage(_frozen(cfg.stage2, cached), run)
    if cfg.stage2.recompute_centroids:
        init_centroids(model, train_eval, device, cfg.eval.batch_size, _workers(cfg, cached))
    return history
