"""`python -m training.fit`: train an OLTR model in two stages, evaluate it, export it.

With no arguments it trains the embedded default (long-tailed MNIST digits 0-5, digits 6-9 as the
open set) on the CPU in a few minutes. ``--config FILE.yaml`` or ``--preset NAME`` plus dotted
overrides (``stage2.epochs=30``) change anything in training/config.py. Under ``torchrun`` it
trains with DistributedDataParallel on every rank.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from oltr_contract.atomic import write_text_atomic
from training import distributed as dist_utils
from training.checkpoint import CheckpointError, load_checkpoint
from training.config import ConfigError, FitConfig, load_config, preset_names, save_config
from training.data import DataError, Split, load_split
from training.engine import predict, reset_centroids, unwrap
from training.evaluate import evaluate_model
from training.feature_cache import FeatureCache
from training.losses import LossWeights
from training.models import OLTRNet, build_model
from training.run_data import RunData
from training.run_report import write_reports
from training.stages import StageRun, run_stage

log = logging.getLogger("training.fit")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """Command-line interface of `python -m training.fit`."""
    parser = argparse.ArgumentParser(
        prog="python -m training.fit",
        description=__doc__,
        add_help=add_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML file with any FitConfig fields")
    parser.add_argument("--preset", choices=preset_names(), help="a bundled configuration")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    parser.add_argument("--run-dir", type=Path, help="write the run here instead of a new folder")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. stage1.epochs=2")
    return parser


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, Any]
    model_dir: Path | None
    model: OLTRNet
    """The trained stage-2 model (in memory, as fit evaluated and exported it)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = get_args_parser().parse_intermixed_args(argv)  # KEY=VALUE before or after options
    try:
        cfg, run_dir = _resolve(args)
    except (ConfigError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        result = fit(cfg, run_dir, resume=args.resume is not None, export=not args.no_export)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, ValueError) as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        dist_utils.shutdown()
    if dist_utils.is_main():
        print(f"run directory: {result.run_dir}")
        if result.model_dir is not None:
            print(f"exported model: {result.model_dir / 'model.onnx'}")
    return 0


def _resolve(args: argparse.Namespace) -> tuple[FitConfig, Path | None]:
    if args.resume is None:
        cfg = load_config(args.config, preset=args.preset, overrides=args.overrides)
        return cfg, args.run_dir
    if args.config or args.preset or args.overrides:
        raise ConfigError(
            "--resume takes the run's own config.yaml; drop --config/--preset/overrides"
        )
    return load_config(args.resume / "config.yaml"), args.resume


def _require_test_images(split: Split) -> None:
    """Evaluation, calibration and the model card need held-out known images: say so at the
    start, not after training."""
    if not split.test:
        raise DataError(
            "the data has no test images of the known classes, which evaluation and the "
            "model card need: hold some out with `python -m training.make_split --source "
            "PHOTOS --out SPLIT` and train with `data.kind=lists data.split_dir=SPLIT`, or "
            "give held-out images with `data.test=` (a class folder, or a list file)"
        )


def fit(
    cfg: FitConfig, run_dir: Path | None = None, *, resume: bool = False, export: bool = True
) -> FitResult:
    """Train both stages, evaluate plain vs OLTR, write reports and plots, export ONNX."""
    started = time.monotonic()
    device = pick_device(cfg.device)
    dist_utils.init_from_env(device)
    run_dir = _prepare_run_dir(cfg, run_dir, resume)
    _setup_logging(run_dir)
    torch.manual_seed(cfg.seed + dist_utils.rank())
    split = load_split(cfg.data)
    _require_test_images(split)
    data = RunData.from_split(split, cfg)
    log.info(
        "data: %d classes, %d training images, device %s, %d rank(s)",
        len(split.class_names),
        len(split.train),
        device,
        dist_utils.world_size(),
    )
    _warn_frozen_centroid_loss(cfg)
    extra = {
        "config": cfg.model_dump(mode="json"),
        "class_names": split.class_names,
        "train_counts": list(split.train_counts),
    }
    model, state1 = _build(cfg, data, run_dir)
    cache = FeatureCache(cfg, data, device)
    with cache.on(model, cfg.stage1.freeze_backbone) as data1:
        plain_report, history = _stage1(cfg, run_dir, data1, device, extra, model, state1)
    model.to_oltr()
    with cache.on(model, cfg.stage2.freeze_backbone) as data2:
        history2 = _stage2(cfg, run_dir, data2, device, extra, model)
        oltr_report = (
            evaluate_model(unwrap(model), data2, cfg, device) if dist_utils.is_main() else None
        )
    metrics: dict[str, Any] = {}
    if oltr_report is not None:
        metrics = write_reports(run_dir, cfg, data, plain_report, oltr_report, history + history2)
        metrics["fit_seconds"] = round(time.monotonic() - started, 1)
        write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        log.info("fit took %.1f s", metrics["fit_seconds"])
    model_dir = _export(cfg, run_dir, unwrap(model), data, metrics) if export else None
    dist_utils.barrier()
    return FitResult(run_dir, metrics, model_dir, unwrap(model))


def pick_device(name: str) -> torch.device:
    """auto: this rank's CUDA device when there is one, else the CPU."""
    if name == "auto":
        name = f"cuda:{dist_utils.local_rank()}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} but CUDA is not available")
        torch.cuda.set_device(device)
    return device


def _warn_frozen_centroid_loss(cfg: FitConfig) -> None:
    if cfg.stage2.freeze_backbone and cfg.loss.centroid_weight > 0:
        log.warning(
            "stage2.freeze_backbone=true with loss.centroid_weight=%g: on a frozen backbone the "
            "centroid loss shrinks the features and costs accuracy (docs/BENCHMARKS.md); "
            "consider loss.centroid_weight=0",
            cfg.loss.centroid_weight,
        )


def _build(cfg: FitConfig, data: RunData, run_dir: Path) -> tuple[OLTRNet, dict[str, Any] | None]:
    """The stage-1 model, with the weights of its checkpoint when the run is resumed (returned
    too, read once)."""
    model = build_model(
        cfg.model, num_classes=len(data.class_names), input_size=cfg.data.input_size, stage="plain"
    )
    ckpt1 = run_dir / "checkpoints" / "stage1.pt"
    state = load_checkpoint(ckpt1) if ckpt1.is_file() else None
    if state is not None:
        model.load_state_dict(state["model"])
    return model, state


def _stage1(cfg, run_dir, data, device, extra, model: OLTRNet, state):
    ckpt1, ckpt2 = run_dir / "checkpoints" / "stage1.pt", run_dir / "checkpoints" / "stage2.pt"
    history: list[dict[str, Any]] = list(state["history"]) if state is not None else []
    model.to(device)
    if not ckpt2.is_file() and (state is None or state["epoch"] + 1 < cfg.stage1.epochs):
        weights = LossWeights.for_stage(data.train_counts, cfg.stage1.logit_adjust_tau)
        history = _train(1, cfg, model, data, device, ckpt1, extra, weights, state)
    plain_report = _plain_report(run_dir, model, data, cfg, device)
    return plain_report, history


def _plain_report(run_dir, model, data, cfg, device) -> dict[str, Any] | None:
    if not dist_utils.is_main():
        return None
    path = run_dir / "eval_plain.json"
    if path.is_file():
        return json.loads(path.read_text())
    report = evaluate_model(model, data, cfg, device)
    write_text_atomic(path, json.dumps(report, indent=2))
    return report


def _stage2(cfg, run_dir, data, device, extra, model: OLTRNet):
    ckpt2 = run_dir / "checkpoints" / "stage2.pt"
    state = load_checkpoint(ckpt2) if ckpt2.is_file() else None
    model.to(device)
    if state is not None:
        model.load_state_dict(state["model"])
    else:
        reset_centroids(model, data.loader("train_eval"), device, start=True)
    history: list[dict[str, Any]] = list(state["history"]) if state else []
    if state is None or state["epoch"] + 1 < cfg.stage2.epochs:
        weights = LossWeights.for_oltr(data.train_counts, cfg)
        history = _train(2, cfg, model, data, device, ckpt2, extra, weights, state)
        if cfg.stage2.recompute_centroids:
            reset_centroids(model, data.loader("train_eval"), device)
    return history


def _train(number, cfg, model, data, device, checkpoint, extra, weights, state):
    """Run training stage ``number`` (1 or 2) of ``model``; returns its history."""
    if model.centroids is not None:  # DDP must not wait for a gradient that never comes
        model.centroids.requires_grad_(weights.centroids_by_gradient)
    run = StageRun.for_fit(
        number,
        cfg,
        _wrap(model, device),
        data.train,
        device,
        checkpoint,
        extra,
        weights,
        state=state,
        on_epoch_end=_val_accuracy(model, data, device),
    )
    return run_stage(cfg.stage1 if number == 1 else cfg.stage2, run)


def _wrap(model: nn.Module, device: torch.device) -> nn.Module:
    if not dist_utils.is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _val_accuracy(model: OLTRNet, data: RunData, device: torch.device):
    def on_epoch_end(epoch: int) -> dict[str, float]:
        if not data.has("val") or not dist_utils.is_main():
            return {}
        out = predict(model, data.loader("val"), device, desc="val")
        return {"val_acc": float((out["logits"].argmax(1) == out["labels"]).mean())}

    return on_epoch_end


def _export(cfg, run_dir, model, data, metrics) -> Path | None:
    from training.artifact import export_trained  # onnx is only needed here

    model_dir = Path(cfg.export.out) if cfg.export.out else run_dir / "model"
    if dist_utils.is_main():
        export_trained(model.cpu(), cfg, metrics, model_dir)
    return model_dir


def _prepare_run_dir(cfg: FitConfig, run_dir: Path | None, resume: bool) -> Path:
    if dist_utils.is_main():
        if run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            run_dir = Path(cfg.output_dir) / f"{cfg.name}-{stamp}"
        if run_dir.exists() and not resume and any(run_dir.iterdir()):
            raise ConfigError(f"run directory {run_dir} is not empty; use --resume {run_dir}")
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return Path(dist_utils.broadcast_object(str(run_dir)))


def _setup_logging(run_dir: Path) -> None:
    level = logging.INFO if dist_utils.is_main() else logging.WARNING
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if dist_utils.is_main():
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(
        level=level,
        handlers=handlers,
        force=True,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("training").setLevel(level)  # a caller may have quieted the package
    logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # per-initializer chatter


if __name__ == "__main__":
    sys.exit(main())
