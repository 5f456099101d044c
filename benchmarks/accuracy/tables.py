"""Markdown tables of aggregated results: ``mean ± sd`` over seeds, rates in percent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from benchmarks.accuracy.aggregate import score_names
from benchmarks.accuracy.datasets import OPEN_SETS

NA = "n/a"
OPEN_TITLES = {"near": "near", "imagenet": "ImageNet", "mnist": "MNIST"}


def cell(summary: Mapping[str, Any] | None, *, percent: bool = True, digits: int = 1) -> str:
    """``"45.3 ± 2.1"`` (percent of a rate by default); ``n/a`` when missing."""
    if summary is None:
        return NA
    scale = 100.0 if percent else 1.0
    mean, std = scale * summary["mean"], scale * summary["std"]
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if summary["n"] > 1 else f"{mean:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def _metric(method: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    return method["metrics"].get(key)


def closed_set_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """Top-1 by shot group and overall, plus training time (the method's own part)."""
    header = ["method", "many", "medium", "few", "overall", "seeds", "train s"]
    rows = [
        [
            m["title"],
            *(cell(_metric(m, f"top1/{g}")) for g in ("many", "medium", "few", "overall")),
            str(len(m["seeds"])),
            f"{m['train_seconds_mean']:.0f}",
        ]
        for m in methods.values()
    ]
    return table(header, rows)


def _open_names(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    present = {k.split("/")[1] for m in methods.values() for k in m["metrics"] if k.count("/") == 2}
    return [o for o in OPEN_SETS if o in present]


def open_set_table(methods: Mapping[str, Mapping[str, Any]], score: str) -> str:
    """AUROC, FPR@95%TPR and F-measure per open set for one score (known = positive)."""
    opens = _open_names(methods)
    header = ["method"]
    for title in ("AUROC", "FPR95", "F"):
        header += [f"{title} {OPEN_TITLES[o]}" for o in opens]
    rows = []
    for m in methods.values():
        if _metric(m, f"{score}/{opens[0]}/auroc") is None:
            continue
        row = [m["title"]]
        for key in ("auroc", "fpr_at_95tpr", "f_measure"):
            row += [cell(_metric(m, f"{score}/{o}/{key}")) for o in opens]
        rows.append(row)
    return table(header, rows)


def open_set_tables(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """One open-set table per score, with headings."""
    if not _open_names(methods):
        return ""
    parts = []
    for score in score_names(methods):
        parts.append(f"**Unknown score: {score}** (threshold accepts 95% of known val images)\n")
        parts.append(open_set_table(methods, score))
    return "\n".join(parts)


def diagnostics_table(methods: Mapping[str, Mapping[str, Any]]) -> str:
    """Mean feature norm and nearest-centroid distance per set, centroid norm and drift (relative
    distance of each centroid from its class's final mean training feature), and the AUROC of
    alternative scores from the same features."""
    opens = _open_names(methods)
    sets = ["test", *opens]
    header = ["method", *(f"‖v‖ {s}" for s in sets), *(f"d_min {s}" for s in sets)]
    header += ["‖c‖", "drift"]
    alt = ("feature_norm", "cosine", "dist_ratio")
    header += [f"AUROC {a} {OPEN_TITLES[o]}" for a in alt for o in opens]
    rows = []
    for m in methods.values():
        row = [m["title"]]
        row += [cell(_metric(m, f"diag/norm/{s}"), percent=False) for s in sets]
        row += [cell(_metric(m, f"diag/min_dist/{s}"), percent=False) for s in sets]
        row += [
            cell(_metric(m, f"diag/centroids/{k}"), percent=False, digits=2)
            for k in ("norm_mean", "drift")
        ]
        row += [cell(_metric(m, f"diag/{a}/{o}")) for a in alt for o in opens]
        rows.append(row)
    return table(header, rows)


def headline_table(
    methods: Mapping[str, Mapping[str, Any]], rows: Sequence[tuple[str, str]]
) -> str:
    """Few-shot and overall top-1, F-measure and AUROC per open set; rows are (method, score)."""
    opens = _open_names(methods)
    header = ["method", "score", "few-shot top-1", "overall top-1"]
    header += [f"F {OPEN_TITLES[o]}" for o in opens] + [f"AUROC {OPEN_TITLES[o]}" for o in opens]
    lines, seen = [], set()
    for name, score in rows:
        m = methods.get(name)
        if m is None or (opens and _metric(m, f"{score}/{opens[0]}/auroc") is None):
            continue
        if not opens and name in seen:  # closed set: one row per method
            continue
        seen.add(name)
        row = [
            m["title"],
            score if opens else "",
            cell(_metric(m, "top1/few")),
            cell(_metric(m, "top1/overall")),
        ]
        row += [cell(_metric(m, f"{score}/{o}/f_measure")) for o in opens]
        row += [cell(_metric(m, f"{score}/{o}/auroc")) for o in opens]
        lines.append(row)
    return table(header, lines)
