"""A finished run's report.md (plain vs OLTR side by side) and its plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training import plots
from training.config import FitConfig
from training.report import markdown_comparison, markdown_table
from training.run_data import RunData
from training.scoring import OPEN_SET_NAME


def write_reports(
    run_dir: Path,
    cfg: FitConfig,
    data: RunData,
    plain: dict[str, Any],
    oltr: dict[str, Any],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """report.md (plain vs OLTR side by side) and the plots; returns metrics.json's content."""
    reports = {
        "plain (stage 1)": without_raw_scores(plain),
        "OLTR (stage 2)": without_raw_scores(oltr),
    }
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


def without_raw_scores(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` without its per-image scores (they go to the plots, not into metrics.json)."""
    return {k: v for k, v in report.items() if k != "raw_scores"}


def _plots(out: Path, cfg: FitConfig, data: RunData, plain, oltr, history) -> None:
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
