"""Plots: each writes one real, non-blank PNG of the expected size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training import plots
from training.metrics import shot_groups

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
COUNTS = [500, 320, 180, 101, 100, 60, 35, 20, 19, 8, 3]
NAMES = [f"class_{i}" for i in range(len(COUNTS))]


def _check_png(path: Path, expected: Path, size_inches: tuple[float, float]) -> np.ndarray:
    assert path == expected and path.is_file()
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert 5_000 < path.stat().st_size < 2_000_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        # tight_layout keeps the canvas size: figsize * dpi.
        assert im.size == tuple(round(s * plots.DPI) for s in size_inches)
        pixels = np.asarray(im.convert("L"), dtype=float)
    assert pixels.std() > 10  # something is drawn on the white canvas
    return pixels


def test_class_counts(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "class_counts.png"  # parent folder is created
    groups = shot_groups(COUNTS)
    path = plots.class_counts(COUNTS, NAMES, groups, out)
    _check_png(path, out, (max(6.0, min(16.0, 0.3 * len(COUNTS) + 3)), 4.5))


def test_class_counts_many_classes_hides_tick_labels(tmp_path: Path) -> None:
    counts = np.random.default_rng(0).integers(1, 1000, size=120).tolist()
    out = tmp_path / "many.png"
    path = plots.class_counts(counts, [str(i) for i in range(120)], shot_groups(counts), path=out)
    _check_png(path, out, (16.0, 4.5))


def test_per_class_accuracy_vs_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    plain = list(np.clip(np.log10(COUNTS) / 3 + rng.normal(0, 0.05, len(COUNTS)), 0, 1))
    oltr = [min(1.0, a + 0.1) for a in plain]
    oltr[3] = None  # a class without test images is skipped, not plotted as 0
    out = tmp_path / "acc.png"
    path = plots.per_class_accuracy_vs_count(
        COUNTS, {"plain (stage 1)": plain, "OLTR (stage 2)": oltr}, path=out
    )
    _check_png(path, out, (7, 4.5))


def test_score_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    known = rng.normal(3.0, 1.0, 500)
    opens = {"open_test": rng.normal(0.5, 1.0, 300), "noise": rng.normal(-1.0, 0.5, 200)}
    out = tmp_path / "hist.png"
    path = plots.score_histograms(known, opens, "reachability", 1.4, out)
    _check_png(path, out, (7, 4.5))
    no_threshold = plots.score_histograms(known, opens, "energy", None, path=tmp_path / "h2.png")
    assert no_threshold.is_file()


def _history(stage1: int, stage2: int) -> list[dict]:
    rows = []
    for stage, n in ((1, stage1), (2, stage2)):
        for epoch in range(n):
            t = epoch / max(n - 1, 1)
            rows.append(
                {
                    "stage": stage,
                    "epoch": epoch,
                    "loss": 2.0 - t - 0.3 * (stage - 1),
                    "train_acc": 0.3 + 0.5 * t,
                    "val_acc": None if epoch == 0 else 0.25 + 0.4 * t,
                }
            )
    return rows


def test_training_curves_two_stages(tmp_path: Path) -> None:
    out = tmp_path / "curves.png"
    path = plots.training_curves(_history(6, 4), out)
    _check_png(path, out, (11, 4.2))


def test_training_curves_stage_one_only_and_empty(tmp_path: Path) -> None:
    assert plots.training_curves(_history(3, 0), path=tmp_path / "c.png").is_file()
    with pytest.raises(ValueError, match="non-empty history"):
        plots.training_curves([], path=tmp_path / "never.png")


def test_stage_two_continues_the_x_axis() -> None:
    # stage 1 epochs 0..5 -> x 0..5; stage 2 epochs 0..3 -> x 6..9; the boundary sits at 5.5.
    rows, start2 = plots._stage_x(_history(6, 4))
    assert [r["x"] for r in rows] == list(range(10))
    assert start2 == 5.5
