"""Evaluation of a trained model: closed-set by shot group, open-set F, AUROC, FPR95.

`python -m training.evaluate RUN_DIR_OR_CHECKPOINT` evaluates a checkpoint (a run directory means
its stage-2 checkpoint) on the data of its own config and writes JSON plus a Markdown table.
`fit` calls :func:`evaluate_model` for the plain and the OLTR model and :func:`write_reports`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from training import plots
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import FitConfig
from training.data import (
    DataError,
    ImageDataset,
    Split,
    eval_transform,
    load_split,
    train_transform,
)
from training.engine import predict
from training.metrics import ScoreCollector, ScoredSet, evaluation_report, fit_combined
from training.models import OLTRNet
from training.report import markdown_comparison, markdown_table
from training.scorers import COMBINED, COMBINED_PARTS, combined

log = logging.getLogger(__name__)

OPEN_SET_NAME = "open"
"""How the config's open_test set is named in reports."""


@dataclass
class EvalData:
    """The datasets of one split with the transforms of one config, and loaders over them."""

    class_names: list[str]
    train_counts: list[int]
    train: ImageDataset
    """Training images with the training augmentation."""
    eval_sets: dict[str, ImageDataset] = field(default_factory=dict)
    """train_eval (training images, eval transform), val, test, open_val, open_test."""
    batch_size: int = 256
    num_workers: int = 0

    @classmethod
    def from_split(cls, split: Split, cfg: FitConfig) -> EvalData:
        """Wrap ``split`` in datasets with ``cfg``'s train and eval transforms."""
        evaluate, on_corrupt = eval_transform(cfg.data), cfg.data.on_corrupt
        sources = {
            "train_eval": split.train,
            "val": split.val,
            "test": split.test,
            "open_val": split.open_val,
            "open_test": split.open_test,
        }
        return cls(
            class_names=list(split.class_names),
            train_counts=list(split.train_counts),
            train=ImageDataset(split.train, train_transform(cfg.data), on_corrupt=on_corrupt),
            eval_sets={
                name: ImageDataset(samples, evaluate, on_corrupt=on_corrupt)
                for name, samples in sources.items()
                if samples
            },
            batch_size=cfg.eval.batch_size,
            num_workers=cfg.data.num_workers,
        )

    def has(self, name: str) -> bool:
        return name in self.eval_sets

    def loader(self, name: str) -> DataLoader:
        """An ordered loader over the eval set ``name``."""
        if name not in self.eval_sets:
            raise DataError(f"this run has no {name!r} images")
        return DataLoader(
            self.eval_sets[name],
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )


def collect(model: OLTRNet, loader: DataLoader, device: torch.device, desc: str) -> ScoredSet:
    """Argmax predictions and every available score of ``model`` over ``loader``."""
    out = predict(model, loader, device, desc=desc)
    collector = ScoreCollector()
    collector.update(out["logits"], out["labels"], out.get("reach"))
    return collector.compute()


def score_sets(model: OLTRNet, data: EvalData, device: torch.device) -> dict[str, ScoredSet]:
    """Scored test, validation and open sets (validation falls back to the training images)."""
    names = [n for n in ("test", "val", "open_val", "open_test") if data.has(n)]
    if "val" not in names:
        log.warning("no validation split: calibrating the threshold on the training images")
        names.append("train_eval")
    return {name: collect(model, data.loader(name), device, name) for name in names}


def add_combined(
    sets: dict[str, ScoredSet], calib: ScoredSet, target_accept: float
) -> dict[str, float] | None:
    """Fit the combined score on ``calib`` and add it to every set (needs reachability)."""
    if not all(part in calib.scores for part in COMBINED_PARTS):
        return None
    params = fit_combined(calib.scores, target_accept)
    for scored in sets.values():
        scored.scores[COMBINED] = combined(scored.scores, params)
    return params


def evaluate_model(
    model: OLTRNet, data: EvalData, cfg: FitConfig, device: torch.device
) -> dict[str, Any]:
    """The evaluation report of ``model`` (see training.metrics.evaluation_report)."""
    sets = score_sets(model, data, device)
    calib = sets.get("val", sets.get("train_eval"))
    params = add_combined(sets, calib, cfg.eval.target_known_accept)
    score = cfg.eval.unknown_score if cfg.eval.unknown_score in sets["test"].scores else None
    report = evaluation_report(
        sets["test"],
        {OPEN_SET_NAME: sets["open_test"]} if "open_test" in sets else {},
        calib.scores,
        train_counts=data.train_counts,
        many=cfg.eval.many_shot,
        few=cfg.eval.few_shot,
        unknown_score=score or "max_softmax",
        target_accept=cfg.eval.target_known_accept,
        val_open=sets["open_val"].scores if "open_val" in sets else None,
    )
    report["calibration_split"] = "val" if "val" in sets else "train"
    report["open_set"]["combined_params"] = params
    report["raw_scores"] = {
        name: {k: v.tolist() for k, v in s.scores.items()}
        for name, s in sets.items()
        if name in ("test", "open_test")
    }
    return report


def write_reports(
    run_dir: Path,
    cfg: FitConfig,
    data: EvalData,
    plain: dict[str, Any],
    oltr: dict[str, Any],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """report.md (plain vs OLTR side by side) and the plots; returns metrics.json's content."""
    reports = {"plain (stage 1)": _without_raw(plain), "OLTR (stage 2)": _without_raw(oltr)}
    (run_dir / "report.md").write_text(
        f"# Run {run_dir.name}\n\n{markdown_comparison(reports)}\n"
        f"## OLTR (stage 2) in detail\n\n{markdown_table(reports['OLTR (stage 2)'])}\n"
    )
    _plots(run_dir / "plots", cfg, data, plain, oltr, history)
    return {
        "plain": reports["plain (stage 1)"],
        "oltr": reports["OLTR (stage 2)"],
        "class_names": data.class_names,
        "train_counts": data.train_counts,
        "history": history,
    }


def _without_raw(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k != "raw_scores"}


def _plots(out: Path, cfg: FitConfig, data: EvalData, plain, oltr, history) -> None:
    out.mkdir(parents=True, exist_ok=True)
    groups = oltr["shot_groups"]["groups"]
    plots.class_counts(
        data.train_counts,
        data.class_names,
        groups,
        out / "class_counts.png",
        many=cfg.eval.many_shot,
        few=cfg.eval.few_shot,
    )
    per_class = {
        "plain (stage 1)": plain["closed_set"]["per_class"],
        "OLTR (stage 2)": oltr["closed_set"]["per_class"],
    }
    plots.per_class_accuracy_vs_count(data.train_counts, per_class, out / "per_class_accuracy.png")
    raw = oltr["raw_scores"]
    decision = oltr["open_set"]["decision"]
    for score in raw.get("test", {}):
        opens = {OPEN_SET_NAME: np.asarray(raw["open_test"][score])} if "open_test" in raw else {}
        threshold = decision["threshold"] if decision and decision["score"] == score else None
        plots.score_histograms(
            np.asarray(raw["test"][score]), opens, score, threshold, out / f"scores_{score}.png"
        )
    if history:
        plots.training_curves(history, out / "training_curves.png")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__)
    parser.add_argument("target", type=Path, help="a run directory or a checkpoint file")
    parser.add_argument(
        "--out", type=Path, help="folder for eval.json and eval.md (default: the run directory)"
    )
    parser.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Evaluate a checkpoint; returns the exit code."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ckpt = args.target / "checkpoints" / "stage2.pt" if args.target.is_dir() else args.target
    try:
        model, cfg = model_from_checkpoint(load_checkpoint(ckpt))
        device = torch.device(
            "cuda"
            if args.device == "auto" and torch.cuda.is_available()
            else "cpu"
            if args.device == "auto"
            else args.device
        )
        data = EvalData.from_split(load_split(cfg.data), cfg)
        report = _without_raw(evaluate_model(model.to(device), data, cfg, device))
    except (CheckpointError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    out = args.out or (args.target if args.target.is_dir() else args.target.parent)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    (out / "eval.md").write_text(markdown_table(report))
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
