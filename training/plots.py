"""Evaluation and training plots: ``*_figure`` builds a figure, the function of the same name
without the suffix writes it as one PNG and returns its path.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly (no
pyplot), so nothing touches a GUI backend or pyplot's global figure list: each figure is
released when the function returns, and plotting is safe from worker threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from oltr_contract.scores import is_known

GROUP_COLOURS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}
GROUP_LABELS = {"many": "many-shot", "medium": "medium-shot", "few": "few-shot"}
MAX_TICK_LABELS = 40
DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _shot_thresholds(ax: Axes, many: int, few: int, *, vertical: bool) -> None:
    draw = ax.axvline if vertical else ax.axhline
    draw(many, color="grey", linestyle="--", linewidth=1, label=f"many-shot: > {many}")
    draw(few, color="grey", linestyle=":", linewidth=1, label=f"few-shot: < {few}")


def class_counts(
    train_counts: Sequence[int],
    class_names: Sequence[str],
    groups: Sequence[str],
    path: str | Path,
    *,
    many: int = 100,
    few: int = 20,
) -> Path:
    """Write :func:`class_counts_figure` to ``path``."""
    return _save(class_counts_figure(train_counts, class_names, groups, many=many, few=few), path)


def class_counts_figure(
    train_counts: Sequence[int],
    class_names: Sequence[str],
    groups: Sequence[str],
    *,
    many: int = 100,
    few: int = 20,
) -> Figure:
    """Training images per class, sorted descending, coloured by shot group."""
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    counts = np.asarray(train_counts)[order]
    fig = Figure(figsize=(max(6.0, min(16.0, 0.3 * len(counts) + 3)), 4.5))
    ax = fig.add_subplot()
    x = np.arange(len(counts))
    for g in GROUP_COLOURS:
        mask = np.asarray([groups[i] == g for i in order])
        if mask.any():
            label = f"{GROUP_LABELS[g]} ({int(mask.sum())} classes)"
            ax.bar(x[mask], counts[mask], color=GROUP_COLOURS[g], label=label)
    _shot_thresholds(ax, many, few, vertical=False)
    if counts.min() > 0 and counts.max() / counts.min() >= 50:
        ax.set_yscale("log")
    if len(counts) <= MAX_TICK_LABELS:
        ax.set_xticks(x, [class_names[i] for i in order], rotation=60, ha="right")
    else:
        ax.set_xticks([])
    ax.set_xlabel("class (sorted by training images)")
    ax.set_ylabel("training images")
    ax.set_title(f"Training set: {len(counts)} classes, {int(counts.sum())} images")
    ax.legend()
    return fig


def per_class_accuracy_vs_count(
    train_counts: Sequence[int],
    accuracies: Mapping[str, Sequence[float | None]],
    path: str | Path,
    *,
    many: int = 100,
    few: int = 20,
) -> Path:
    """Write :func:`per_class_accuracy_figure` to ``path``."""
    return _save(per_class_accuracy_figure(train_counts, accuracies, many=many, few=few), path)


def per_class_accuracy_figure(
    train_counts: Sequence[int],
    accuracies: Mapping[str, Sequence[float | None]],
    *,
    many: int = 100,
    few: int = 20,
) -> Figure:
    """Per-class test accuracy against training images (log x), one series per model."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    counts = np.asarray(train_counts, dtype=float)
    markers = "os^Dv"
    for i, (model, acc) in enumerate(accuracies.items()):
        values = np.asarray([np.nan if a is None else 100 * a for a in acc], dtype=float)
        ax.scatter(counts, values, marker=markers[i % len(markers)], alpha=0.75, label=model)
    _shot_thresholds(ax, many, few, vertical=True)
    ax.set_xscale("log")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test top-1 accuracy of the class (%)")
    ax.set_title("Per-class accuracy vs. training images")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def score_histograms(
    known_scores: Sequence[float],
    open_scores: Mapping[str, Sequence[float]],
    score_name: str,
    threshold: float | None,
    path: str | Path,
) -> Path:
    """Write :func:`score_histograms_figure` to ``path``."""
    return _save(score_histograms_figure(known_scores, open_scores, score_name, threshold), path)


def score_histograms_figure(
    known_scores: Sequence[float],
    open_scores: Mapping[str, Sequence[float]],
    score_name: str,
    threshold: float | None,
) -> Figure:
    """Overlapping score histograms (known vs. each open set) with the decision threshold;
    the legend gives the share of known images accepted and of each open set rejected."""
    series = {"known (test)": np.asarray(known_scores, dtype=float)}
    series.update({name: np.asarray(s, dtype=float) for name, s in open_scores.items()})
    bins = np.histogram_bin_edges(np.concatenate(list(series.values())), bins=40)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for i, (name, values) in enumerate(series.items()):
        label = name
        if threshold is not None:
            accepted = np.mean(is_known(values, threshold))
            rate = accepted if i == 0 else 1.0 - accepted
            label += f" ({100 * rate:.1f}% {'accepted' if i == 0 else 'rejected'})"
        ax.hist(values, bins=bins, density=True, alpha=0.5, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_xlabel(f"{score_name} (higher = more known)")
    ax.set_ylabel("density")
    ax.set_title(f"{score_name}: known vs. open images")
    ax.legend()
    return fig


def _stage_x(history: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], float | None]:
    """Rows sorted by (stage, epoch) with a global x; the x where stage 2 starts (if any)."""
    rows = sorted(history, key=lambda r: (r["stage"], r["epoch"]))
    stage1 = [r["epoch"] for r in rows if r["stage"] == 1]
    stage2 = [r["epoch"] for r in rows if r["stage"] == 2]
    offset = (max(stage1) + 1 - min(stage2)) if stage1 and stage2 else 0
    out = [{**r, "x": r["epoch"] + (offset if r["stage"] == 2 else 0)} for r in rows]
    start2 = min(stage2) + offset - 0.5 if stage1 and stage2 else None
    return out, start2


def _plot_metric(
    ax: Axes, rows: list[dict[str, Any]], key: str, label: str, scale: float, colour: str
) -> None:
    """One series in one colour across both stages (circles: stage 1, squares: stage 2)."""
    for stage, marker in ((1, "o"), (2, "s")):
        pts = [(r["x"], r[key]) for r in rows if r["stage"] == stage and r.get(key) is not None]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.plot(x, np.asarray(y) * scale, f"-{marker}", color=colour, markersize=3, label=label)
            label = "_nolegend_"  # the legend shows each series once


def training_curves(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`training_curves_figure` to ``path``."""
    return _save(training_curves_figure(history), path)


def training_curves_figure(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Loss and train/val accuracy per epoch for both stages (stage 2 continues the x axis).

    ``history``: dicts with ``stage`` (1|2), ``epoch``, ``loss``, ``train_acc``, ``val_acc``
    (accuracies as fractions; a missing or None value is skipped).
    """
    if not history:
        raise ValueError("training_curves needs a non-empty history")
    rows, start2 = _stage_x(history)
    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    _plot_metric(ax_loss, rows, "loss", "training loss", 1.0, "#1f77b4")
    _plot_metric(ax_acc, rows, "train_acc", "train", 100.0, "#1f77b4")
    _plot_metric(ax_acc, rows, "val_acc", "validation", 100.0, "#ff7f0e")
    for ax, ylabel in ((ax_loss, "loss"), (ax_acc, "top-1 accuracy (%)")):
        if start2 is not None:
            ax.axvline(
                start2, color="grey", linestyle="--", linewidth=1, label="stage 2 (OLTR) starts"
            )
        ax.set_xlabel("epoch (stage 2 continues after stage 1)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_title("Training loss (stage 1: plain, stage 2: OLTR)")
    ax_acc.set_title("Top-1 accuracy")
    return fig
