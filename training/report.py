"""Markdown tables from :func:`training.metrics.evaluation_report` dicts.

Rates are shown as percentages with one decimal; a missing value (an empty shot group, a
score the model does not have) is shown as "n/a".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from oltr_contract.scores import SCORE_NAMES
from training.metrics import GROUPS

NA = "n/a"
_GROUP_TITLES = {"many": "many-shot", "medium": "medium-shot", "few": "few-shot"}


def pct(value: float | None) -> str:
    """A rate in [0, 1] as a percentage with one decimal (``0.1234 -> "12.3"``)."""
    return NA if value is None else f"{100 * value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _closed_set_table(report: Mapping[str, Any]) -> str:
    closed, counts = report["closed_set"], report["shot_groups"]["num_classes"]
    header = ["", *(_GROUP_TITLES[g] for g in GROUPS), "overall"]
    rows = [
        ["top-1 (%)", *(pct(closed[g]) for g in GROUPS), pct(closed["overall"])],
        ["classes", *(str(counts[g]) for g in GROUPS), str(sum(counts.values()))],
    ]
    return _table(header, rows)


def _open_set_table(report: Mapping[str, Any]) -> str:
    header = [
        "score",
        "open set",
        "AUROC (%)",
        "FPR@95TPR (%)",
        "threshold",
        "known accept, test (%)",
        "open reject (%)",
        "F-measure (%)",
        "open-set acc. (%)",
        "macro-F1 (%)",
    ]
    chosen = report["open_set"]["unknown_score"]
    rows = []
    for name, block in report["open_set"]["scores"].items():
        label = f"**{name}** (used)" if name == chosen else name
        for open_name, m in block["open_sets"].items():
            rows.append(
                [
                    label,
                    open_name,
                    pct(m["auroc"]),
                    pct(m["fpr_at_95tpr"]),
                    f"{block['threshold']:.4g}",
                    pct(block["test_known_accept"]),
                    pct(m["open_reject"]),
                    pct(m["f_measure"]),
                    pct(m["open_set_accuracy"]),
                    pct(m["macro_f1"]),
                ]
            )
    return _table(header, rows)


def markdown_table(report: Mapping[str, Any]) -> str:
    """One model's report: closed-set top-1 by shot group, then open-set metrics per score."""
    target = report["open_set"]["target_known_accept"]
    rule = report["shot_groups"]["rule"]
    parts = [
        f"### Closed-set top-1 (shot groups: {rule})",
        _closed_set_table(report),
        f"### Open set (known = positive; thresholds accept {pct(target)}% of known val images)",
        _open_set_table(report),
    ]
    return "\n\n".join(parts) + "\n"


def _open_set_names(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for report in reports.values():
        for block in report["open_set"]["scores"].values():
            names.update(dict.fromkeys(block["open_sets"]))
    return list(names)


def _open_metric(report: Mapping[str, Any], score: str, open_name: str, key: str) -> str:
    block = report["open_set"]["scores"].get(score)
    if block is None or open_name not in block["open_sets"]:
        return NA
    return pct(block["open_sets"][open_name][key])


def markdown_comparison(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Models side by side (columns): top-1 by shot group, F-measure and AUROC per score.

    ``reports`` maps a column title (e.g. "plain (stage 1)") to an evaluation report.
    """
    models = list(reports.values())
    rows = [
        [f"top-1 {_GROUP_TITLES[g]} (%)", *(pct(r["closed_set"][g]) for r in models)]
        for g in GROUPS
    ]
    rows.append(["top-1 overall (%)", *(pct(r["closed_set"]["overall"]) for r in models)])
    for open_name in _open_set_names(reports):
        for metric, key in (("F-measure", "f_measure"), ("AUROC", "auroc")):
            for score in SCORE_NAMES:
                cells = [_open_metric(r, score, open_name, key) for r in models]
                if any(c != NA for c in cells):
                    rows.append([f"{metric} {score}, {open_name} (%)", *cells])
    return _table(["metric", *reports], rows) + "\n"
