"""The report's plots, drawn with the project's own plotting helpers (training.plots)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy.runner import load_scores
from training import plots


def per_class_accuracy(
    methods: Mapping[str, Mapping[str, Any]],
    names: Sequence[str],
    train_counts: Sequence[int],
    path: Path,
    *,
    many: int,
    few: int,
) -> Path | None:
    """Mean (over seeds) per-class accuracy against training images for ``names``."""
    chosen = {methods[n]["title"]: methods[n]["per_class_mean"] for n in names if n in methods}
    if not chosen:
        return None
    return plots.per_class_accuracy_vs_count(train_counts, chosen, path, many=many, few=few)


def score_histograms(
    work: Path,
    protocol: str,
    seed: int,
    method: str,
    result: Mapping[str, Any],
    out_dir: Path,
) -> list[Path]:
    """Known test vs each open set, one PNG per score, for one run (with its threshold)."""
    scores = load_scores(work, protocol, seed, method)
    blocks = result["report"]["open_set"]["scores"]
    paths = []
    for score, block in blocks.items():
        opens = {
            name: scores[f"{name}/{score}"]
            for name in block["open_sets"]
            if f"{name}/{score}" in scores
        }
        if not opens:
            continue
        path = out_dir / f"{protocol}_{method}_{score}.png"
        known = np.asarray(scores[f"test/{score}"])
        paths.append(plots.score_histograms(known, opens, score, block["threshold"], path))
    return paths
