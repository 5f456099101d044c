"""Mean and spread over seeds of the numbers the tables show.

A run's numbers are flattened to ``metric key -> value`` (see :func:`flatten`); across seeds each
key gets ``{"mean", "std", "n", "values"}`` with the sample standard deviation (ddof 1; 0 for a
single seed). Missing values (an empty shot group, a score the model lacks) are left out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from oltr_contract.scores import SCORE_NAMES
from training.metrics import GROUPS

OPEN_METRICS = ("auroc", "fpr_at_95tpr", "f_measure", "macro_f1", "open_reject")


def flatten(result: Mapping[str, Any]) -> dict[str, float]:
    """One run's headline numbers: ``top1/<group>``, ``<score>/<open set>/<metric>``, ...

    Also ``<score>/test_known_accept``, ``diag/<alt score>/<open set>`` (alternative-score
    AUROCs) and ``diag/norm/<set>`` (mean feature norm).
    """
    report = result["report"]
    flat: dict[str, float] = {}
    closed = report["closed_set"]
    for group in (*GROUPS, "overall"):
        if closed[group] is not None:
            flat[f"top1/{group}"] = closed[group]
    for score, block in report["open_set"]["scores"].items():
        flat[f"{score}/test_known_accept"] = block["test_known_accept"]
        for open_name, metrics in block["open_sets"].items():
            for key in OPEN_METRICS:
                flat[f"{score}/{open_name}/{key}"] = metrics[key]
    diag = result.get("diagnostics", {})
    for score, per_open in diag.get("auroc", {}).items():
        for open_name, value in per_open.items():
            flat[f"diag/{score}/{open_name}"] = value
    for set_name, row in diag.get("sets", {}).items():
        flat[f"diag/norm/{set_name}"] = row["feature_norm_mean"]
        if "min_dist_mean" in row:
            flat[f"diag/min_dist/{set_name}"] = row["min_dist_mean"]
    for key, value in diag.get("centroids", {}).items():
        flat[f"diag/centroids/{key}"] = value
    return flat


def summarise(values: Iterable[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` of ``values`` (std: ddof 1, 0 for one value)."""
    arr = np.asarray(list(values), dtype=float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size), "values": arr.tolist()}


def aggregate(results: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``method -> {"title", "kind", "seeds", "metrics": {key: summary}, "per_class": [...]}``."""
    by_method: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for result in results:
        by_method[result["method"]].append(result)
    out: dict[str, dict[str, Any]] = {}
    for method, runs in by_method.items():
        flats = [flatten(r) for r in runs]
        keys = sorted({k for f in flats for k in f})
        per_class = np.array(
            [
                [np.nan if a is None else a for a in r["report"]["closed_set"]["per_class"]]
                for r in runs
            ],
            dtype=float,
        )
        out[method] = {
            "title": runs[0]["title"],
            "kind": runs[0]["kind"],
            "seeds": sorted(r["seed"] for r in runs),
            "metrics": {k: summarise(f[k] for f in flats if k in f) for k in keys},
            "per_class_mean": np.nanmean(per_class, axis=0).tolist(),
            "train_seconds_mean": float(np.mean([r["train_seconds"] for r in runs])),
        }
    return out


def score_names(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The scores that occur in any method, in the project's order."""
    present = {k.split("/")[0] for m in methods.values() for k in m["metrics"]}
    return [s for s in SCORE_NAMES if s in present]
