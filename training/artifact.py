"""From a finished run to the served artifact: the model card and the ONNX export."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oltr_contract.artifact import CARD_SCHEMA_VERSION, INPUT_LAYOUT
from oltr_contract.scores import COMBINED, score_definition
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import FitConfig
from training.data import eval_preprocess_params
from training.export import export_onnx
from training.models import OLTRNet


def build_card(cfg: FitConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """The model card (everything but ``version``, which the export fills in)."""
    oltr = metrics["oltr"]
    decision = oltr["open_set"]["decision"]
    score = decision["score"]
    return {
        "schema_version": CARD_SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "class_names": metrics["class_names"],
        "input_size": cfg.data.input_size,
        "preprocess": {**eval_preprocess_params(cfg.data), "layout": INPUT_LAYOUT},
        "unknown_score": {
            "name": score,
            "definition": score_definition(score),
            "higher_is_known": True,
            "params": oltr["open_set"].get("combined_params") if score == COMBINED else None,
        },
        "threshold": decision["threshold"],
        "calibration": {
            "split": oltr.get("calibration_split", "val"),
            "target_known_accept": oltr["open_set"]["target_known_accept"],
            "known_accept": decision["known_accept"],
            "open_reject": decision["open_reject"],
        },
        "train_counts": metrics["train_counts"],
        "shot_groups": oltr["shot_groups"]["groups"],
        "evaluation": evaluation_summary(metrics),
        "training_config": cfg.model_dump(mode="json"),
    }


def evaluation_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Headline figures of plain and OLTR for the card: top-1 by group, F and AUROC."""
    summary: dict[str, Any] = {}
    for model in ("plain", "oltr"):
        report = metrics.get(model)
        if report is None:
            continue
        closed = report["closed_set"]
        entry: dict[str, Any] = {g: closed[g] for g in ("overall", "many", "medium", "few")}
        for score, block in report["open_set"]["scores"].items():
            for open_name, figures in block["open_sets"].items():
                entry[f"{open_name}/{score}"] = {
                    k: figures[k] for k in ("auroc", "fpr_at_95tpr", "f_measure")
                }
        summary[model] = entry
    return summary


def export_trained(model: OLTRNet, cfg: FitConfig, metrics: dict[str, Any], out: Path) -> Path:
    """Export a trained stage-2 model with its card into ``out``; returns the ONNX path."""
    return export_onnx(
        model, out, build_card(cfg, metrics), opset=cfg.export.opset, fp16=cfg.export.fp16
    )


def export_run(run_dir: Path, out: Path, *, fp16: bool | None = None) -> Path:
    """Export the stage-2 checkpoint of ``run_dir`` (with its metrics.json) into ``out``."""
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    state = load_checkpoint(run_dir / "checkpoints" / "stage2.pt")
    if state["stage"] != "oltr":
        raise CheckpointError(f"{run_dir}: stage2.pt holds a {state['stage']!r} model")
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise CheckpointError(f"{run_dir} has no metrics.json: the run did not finish")
    try:
        metrics = json.loads(metrics_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{metrics_path} is not valid JSON: {err}") from err
    model, cfg = model_from_checkpoint(state)
    if fp16 is not None:
        cfg.export.fp16 = fp16
    return export_trained(model, cfg, metrics, out)
