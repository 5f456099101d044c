"""From a finished run to the served artifact: the model card and the ONNX export."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from oltr_contract.artifact import CARD_SCHEMA_VERSION, INPUT_LAYOUT
from oltr_contract.scores import COMBINED, score_definition
from service.config import DEFAULT_MAX_IMAGE_PIXELS
from service.enrolment import Artifact, with_reference, write_model
from service.preprocessing import image_to_input
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import FitConfig
from training.data import DataError, eval_preprocess_params, load_split
from training.export import export_onnx
from training.models import OLTRNet

log = logging.getLogger(__name__)
REFERENCE_PER_CLASS = 50
"""Training images per class that the imprint reference (for enrolment) is computed from."""


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
    """Export a trained stage-2 model with its card into ``out``; returns the ONNX path. A
    float32 export also gets its imprint reference, so classes can be enrolled into it."""
    path = export_onnx(
        model, out, build_card(cfg, metrics), opset=cfg.export.opset, fp16=cfg.export.fp16
    )
    if cfg.export.fp16:
        return path  # enrolment edits float32 constants only
    try:
        add_imprint_reference(path, load_split(cfg.data).train)
    except (DataError, OSError) as err:
        log.warning(
            "exported without an imprint reference (the training images are not readable: "
            "%s); add one before enrolling: python -m service.enrol reference",
            err,
        )
    return path


def add_imprint_reference(
    model_path: Path, train: list[tuple[Path, int]], per_class: int = REFERENCE_PER_CLASS
) -> None:
    """Store the imprint reference of up to ``per_class`` training images per class (a fixed
    sample, decoded as the service decodes) in the card of ``model_path`` (version unchanged)."""
    artifact = Artifact.read(model_path)
    spec = artifact.preprocess_spec
    by_class: dict[int, list[Path]] = {}
    for path, label in train:
        by_class.setdefault(label, []).append(path)
    sample = [
        (path, label)
        for label, paths in sorted(by_class.items())
        for path in random.Random(label).sample(paths, min(per_class, len(paths)))
    ]
    pixels = np.stack(
        [
            image_to_input(p.read_bytes(), spec, max_pixels=DEFAULT_MAX_IMAGE_PIXELS)
            for p, _ in sample
        ]
    )
    labels = np.array([label for _, label in sample], dtype=np.int64)
    write_model(with_reference(artifact, pixels, labels), model_path.parent)


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
