"""OLTR models: ``build_model(cfg.model, num_classes=K, input_size=S, stage=...)``."""

from . import backbone as _backbone  # noqa: F401  (registers the backbones)
from ._registry import create_backbone, list_backbones
from .oltr import OLTRNet, OLTROutput, build_model

__all__ = ["OLTRNet", "OLTROutput", "build_model", "create_backbone", "list_backbones"]
