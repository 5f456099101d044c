"""Plots: each writes one real PNG of the expected size, and its figure shows what its name
says (bars, points, thresholds and rates checked against hand-computed values)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
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


def test_class_counts_shows_every_class_sorted_and_coloured_by_group() -> None:
    counts = [5, 300, 40, 120]  # few, many, medium, many
    names = ["a", "b", "c", "d"]
    ax = plots.class_counts_figure(counts, names, shot_groups(counts)).axes[0]
    bars = sorted(
        ((p.get_x() + p.get_width() / 2, p.get_height(), p.get_facecolor()) for p in ax.patches),
        key=lambda bar: bar[0],
    )
    assert [h for _, h, _ in bars] == [300, 120, 40, 5]  # sorted descending
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "d", "c", "a"]
    colours = [to_hex(c) for _, _, c in bars]
    many, medium, few = (plots.GROUP_COLOURS[g] for g in ("many", "medium", "few"))
    assert colours == [many, many, medium, few]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    groups = {"many-shot (2 classes)", "medium-shot (1 classes)", "few-shot (1 classes)"}
    assert groups <= set(legend)
    assert ax.get_yscale() == "log"  # 300 / 5 >= 50


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


def test_per_class_accuracy_points_are_count_and_percent() -> None:
    fig = plots.per_class_accuracy_figure([200, 10, 50], {"m": [0.5, None, 1.0]})
    (points,) = fig.axes[0].collections
    xy = points.get_offsets()
    np.testing.assert_array_equal(xy[:, 0], [200, 10, 50])
    np.testing.assert_array_equal(xy[[0, 2], 1], [50.0, 100.0])
    assert np.ma.getmaskarray(xy)[1, 1]  # no test images: no point (NaN, masked), not 0 %


def test_score_histograms(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    known = rng.normal(3.0, 1.0, 500)
    opens = {"open_test": rng.normal(0.5, 1.0, 300), "noise": rng.normal(-1.0, 0.5, 200)}
    out = tmp_path / "hist.png"
    path = plots.score_histograms(known, opens, "reachability", 1.4, out)
    _check_png(path, out, (7, 4.5))
    no_threshold = plots.score_histograms(known, opens, "energy", None, path=tmp_path / "h2.png")
    assert no_threshold.is_file()


def test_score_histograms_mark_the_threshold_and_the_decided_shares() -> None:
    known = [0.5, 1.0, 2.0, 3.0]  # >= 1.0: 3 of 4 accepted (the threshold itself is known)
    opens = {"photos": [0.1, 0.2, 1.0, 5.0, 0.9]}  # < 1.0: 3 of 5 rejected
    ax = plots.score_histograms_figure(known, opens, "reachability", 1.0).axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "known (test) (75.0% accepted)" in legend
    assert "photos (60.0% rejected)" in legend
    assert "threshold 1" in legend
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1.0, 1.0]
    assert ax.get_xlabel() == "reachability (higher = more known)"


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


def test_training_curves_plot_the_history() -> None:
    ax_loss, ax_acc = plots.training_curves_figure(_history(3, 2)).axes
    lines = {(ln.get_marker(), ln.get_color()): ln for ln in ax_loss.get_lines()}
    stage1, stage2 = lines[("o", "#1f77b4")], lines[("s", "#1f77b4")]
    # stage 1 epochs 0..2: loss 2 - t with t = 0, 0.5, 1; stage 2 (x 3, 4): 1.7 - t, t = 0, 1
    np.testing.assert_allclose(stage1.get_xydata(), [[0, 2.0], [1, 1.5], [2, 1.0]])
    np.testing.assert_allclose(stage2.get_xydata(), [[3, 1.7], [4, 0.7]])
    boundary = [ln for ln in ax_loss.get_lines() if ln.get_linestyle() == "--"]
    assert [list(ln.get_xdata()) for ln in boundary] == [[2.5, 2.5]]
    val = [ln for ln in ax_acc.get_lines() if ln.get_color() == "#ff7f0e"]
    # validation: None at each stage's epoch 0 is skipped; 25 + 40 t percent otherwise
    np.testing.assert_allclose(
        np.concatenate([ln.get_xydata() for ln in val]), [[1, 45], [2, 65], [4, 65]]
    )


def test_training_curves_stage_one_only_and_empty(tmp_path: Path) -> None:
    assert plots.training_curves(_history(3, 0), path=tmp_path / "c.png").is_file()
    with pytest.raises(ValueError, match="non-empty history"):
        plots.training_curves([], path=tmp_path / "never.png")


def test_stage_two_continues_the_x_axis() -> None:
    # stage 1 epochs 0..5 -> x 0..5; stage 2 epochs 0..3 -> x 6..9; the boundary sits at 5.5.
    rows, start2 = plots._stage_x(_history(6, 4))
    assert [r["x"] for r in rows] == list(range(10))
    assert start2 == 5.5
