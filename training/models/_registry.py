"""A tiny name-to-builder registry for backbones (timm's ``register_model`` in miniature)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

BackboneBuilder = Callable[..., nn.Module]

_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str, builder: BackboneBuilder) -> None:
    """Make ``builder(input_size=..., small_input=...)`` available as ``name``."""
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered")
    _BACKBONES[name] = builder


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`, sorted."""
    return sorted(_BACKBONES)


def create_backbone(name: str, *, input_size: int, small_input: bool) -> nn.Module:
    """Build the backbone registered as ``name`` for square inputs of side ``input_size``."""
    if name not in _BACKBONES:
        raise ValueError(
            f"model.backbone: unknown backbone {name!r}; available: {list_backbones()}"
        )
    return _BACKBONES[name](input_size=input_size, small_input=small_input)
