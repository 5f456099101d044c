"""Train and eval presets (torchvision references style): PIL image -> float tensor [3, C, C].

Tensors are in [0, 1] and NOT normalised (normalisation lives inside the model). The eval preset
is exactly what a client of the ONNX model does before sending uint8 pixels: resize the shorter
side to S with PIL, centre-crop C (torchvision arithmetic), then scale. Scaling multiplies the
uint8 pixels by ``float32(1/255)``; the exported graph must scale the same way for bit-exact
parity (``x / 255`` differs from ``x * (1/255)`` in the last bit for 126 of the 256 values).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from training.config import DataConfig

PIXEL_SCALE = np.float32(1.0 / 255.0)
"""uint8 pixel -> [0, 1] factor (float32)."""

INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


class ToUnitTensor:
    """PIL image -> float32 tensor [3, H, W] equal to ``uint8 pixels * float32(1/255)``."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels = np.asarray(image, dtype=np.uint8).astype(np.float32) * PIXEL_SCALE
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EvalPreset:
    """Resize(S) + CenterCrop(C) + ToUnitTensor."""

    def __init__(self, *, input_size: int, resize_size: int, interpolation: str = "bilinear"):
        self.transforms = T.Compose(
            [
                T.Resize(resize_size, interpolation=INTERPOLATION[interpolation]),
                T.CenterCrop(input_size),
                ToUnitTensor(),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transforms(image)


class TrainPreset:
    """Training augmentation: none | crop | crop_flip | imagenet (see DataConfig.augment)."""

    def __init__(
        self, *, input_size: int, resize_size: int, interpolation: str = "bilinear", augment: str
    ):
        mode = INTERPOLATION[interpolation]
        if augment == "imagenet":
            steps: list[Any] = [
                T.RandomResizedCrop(input_size, interpolation=mode),
                T.RandomHorizontalFlip(),
                T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
            ]
        elif augment == "none":
            steps = [T.Resize(resize_size, interpolation=mode), T.CenterCrop(input_size)]
        elif augment in ("crop", "crop_flip"):
            steps = [
                T.Resize(resize_size, interpolation=mode),
                T.RandomCrop(input_size, padding=input_size // 8),
            ]
            if augment == "crop_flip":
                steps.append(T.RandomHorizontalFlip())
        else:
            raise ValueError(f"unknown augment {augment!r}")
        self.transforms = T.Compose([*steps, ToUnitTensor()])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transforms(image)


def train_transform(cfg: DataConfig) -> TrainPreset:
    """The training preset for ``cfg`` (input_size, resize_size, interpolation, augment)."""
    return TrainPreset(
        input_size=cfg.input_size,
        resize_size=cfg.resize_size,
        interpolation=cfg.interpolation,
        augment=cfg.augment,
    )


def eval_transform(cfg: DataConfig) -> EvalPreset:
    """The evaluation preset for ``cfg``: the preprocessing the model card describes."""
    return EvalPreset(
        input_size=cfg.input_size, resize_size=cfg.resize_size, interpolation=cfg.interpolation
    )


def eval_preprocess_params(cfg: DataConfig) -> dict[str, Any]:
    """The eval preprocessing for the model card: resize_shorter, crop, interpolation."""
    return {
        "resize_shorter": cfg.resize_size,
        "crop": cfg.input_size,
        "interpolation": cfg.interpolation,
    }
