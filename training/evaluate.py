"""Evaluation of a trained model: closed-set by shot group, open-set F, AUROC, FPR95.

`python -m training.evaluate RUN_DIR_OR_CHECKPOINT` evaluates a checkpoint (a run directory means
its stage-2 checkpoint) on the data of its own config and writes JSON plus a Markdown table.
`fit` calls :func:`evaluate_model` for the plain and the OLTR model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import FitConfig
from training.data import DataError, load_split
from training.metrics import evaluation_report
from training.models import OLTRNet
from training.report import markdown_table
from training.run_data import RunData
from training.run_report import without_raw_scores
from training.scoring import OPEN_SET_NAME, add_combined, decision_score, score_sets


def evaluate_model(
    model: OLTRNet, data: RunData, cfg: FitConfig, device: torch.device
) -> dict[str, Any]:
    """The evaluation report of ``model`` (see training.metrics.evaluation_report)."""
    sets = score_sets(model, data, device)
    calib = sets.get("val", sets.get("train_eval"))
    params = add_combined(sets, calib, cfg.eval.target_known_accept)
    score = decision_score(cfg.eval.unknown_score, sets["test"].scores, model.stage + " model")
    report = evaluation_report(
        sets["test"],
        {OPEN_SET_NAME: sets["open_test"]} if "open_test" in sets else {},
        calib.scores,
        train_counts=data.train_counts,
        many=cfg.eval.many_shot,
        few=cfg.eval.few_shot,
        unknown_score=score,
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
        data = RunData.from_split(load_split(cfg.data), cfg)
        report = without_raw_scores(evaluate_model(model.to(device), data, cfg, device))
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
