"""Checkpoints: plain dicts, written atomically, loaded with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from oltr_contract.atomic import atomic_file
from training.config import FitConfig
from training.models import OLTRNet, build_model


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the code."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` through a temporary file and an atomic rename."""
    with atomic_file(path) as handle:
        torch.save(state, handle)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint dict; a missing or corrupt file raises CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    missing = {"config", "stage", "model", "class_names"} - set(state)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {sorted(missing)}")
    return state


def model_from_checkpoint(state: dict[str, Any]) -> tuple[OLTRNet, FitConfig]:
    """Rebuild the model a checkpoint was trained as and load its weights."""
    cfg = FitConfig.model_validate(state["config"])
    model = build_model(
        cfg.model,
        num_classes=len(state["class_names"]),
        input_size=cfg.data.input_size,
        stage=state["stage"],
        load_pretrained=False,  # the checkpoint's own weights replace them at once
    )
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg
