"""Evaluate one model on the benchmark's sets: the project's report plus feature diagnostics.

The report is :func:`training.metrics.evaluation_report` with every open set by name (near,
imagenet, mnist), the threshold calibrated on the known validation images (or the training
images when a split has none) and, for models with reachability, the ``combined`` score fitted
on the same images -- as training.evaluate does. The diagnostics explain the
reachability score: feature norms and nearest-centroid distances per set, and the AUROC of
alternative scores computed from the same features.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy.special import softmax
from torch.utils.data import DataLoader, Dataset

from training.config import FitConfig
from training.engine import predict
from training.metrics import ScoredSet, auroc, evaluation_report
from training.models import OLTRNet
from training.scoring import add_combined, decision_score, scored_outputs

KNOWN_SETS = ("test", "val", "train_eval")
NOT_OPEN = (*KNOWN_SETS, "open_val")


def run_sets(
    model: OLTRNet,
    sets: Mapping[str, Dataset],
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """``predict`` over every set: the artifact's outputs (reachability, distance ... for OLTR
    models only) and labels."""
    loaders = {
        name: DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for name, ds in sets.items()
    }
    return {name: predict(model, loader, device, name) for name, loader in loaders.items()}


def scored(out: Mapping[str, np.ndarray], logit_shift: np.ndarray | None = None) -> ScoredSet:
    """Predictions and every score of one set; ``logit_shift`` is subtracted from the logits
    (and the probabilities are those of the shifted logits)."""
    if logit_shift is not None:
        logits = out["logits"].astype(np.float64) - logit_shift
        out = {**out, "logits": logits, "probabilities": softmax(logits, axis=1)}
    return scored_outputs(out)


def report(
    outs: Mapping[str, Mapping[str, np.ndarray]],
    cfg: FitConfig,
    train_counts: list[int],
    logit_shift: np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, ScoredSet]]:
    """The evaluation report of one model and the scored sets it was computed from."""
    sets = {name: scored(out, logit_shift) for name, out in outs.items()}
    calib = sets["val"] if "val" in sets else sets["train_eval"]
    params = add_combined(sets, calib, cfg.eval.target_known_accept)
    opens = {name: s for name, s in sets.items() if name not in NOT_OPEN}
    result = evaluation_report(
        sets["test"],
        opens,
        calib.scores,
        train_counts=train_counts,
        many=cfg.eval.many_shot,
        few=cfg.eval.few_shot,
        unknown_score=decision_score(cfg.eval.unknown_score, sets["test"].scores, "this model"),
        target_accept=cfg.eval.target_known_accept,
        val_open=sets["open_val"].scores if "open_val" in sets else None,
    )
    result["calibration_split"] = "val" if "val" in sets else "train"
    result["open_set"]["combined_params"] = params
    return result, sets


def _norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x.astype(np.float64), axis=1)


def alternative_scores(direct: np.ndarray, centroids: np.ndarray | None) -> dict[str, np.ndarray]:
    """Scores from the direct feature (higher = more known), for the diagnostics only.

    feature_norm: ||v||. With centroids: cosine (largest cosine similarity of v to a centroid)
    and dist_ratio (second-nearest over nearest centroid distance, >= 1).
    """
    scores = {"feature_norm": _norms(direct)}
    if centroids is None:
        return scores
    v, c = direct.astype(np.float64), centroids.astype(np.float64)
    unit_v = v / np.maximum(_norms(v), 1e-12)[:, None]
    unit_c = c / np.maximum(_norms(c), 1e-12)[:, None]
    scores["cosine"] = (unit_v @ unit_c.T).max(axis=1)
    dist = np.sqrt(((v[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    two = np.sort(dist, axis=1)[:, :2]
    scores["dist_ratio"] = two[:, 1] / np.maximum(two[:, 0], 1e-12)
    return scores


def diagnostics(
    outs: Mapping[str, Mapping[str, np.ndarray]], centroids: np.ndarray | None
) -> dict[str, Any]:
    """Feature norms, nearest-centroid distances and alternative-score AUROCs per open set."""
    per_set: dict[str, Any] = {}
    alt = {name: alternative_scores(out["embedding"], centroids) for name, out in outs.items()}
    for name, out in outs.items():
        row = {"feature_norm_mean": float(alt[name]["feature_norm"].mean())}
        if "distance" in out:
            row["min_dist_mean"] = float(np.mean(out["distance"]))
        per_set[name] = row
    known = alt["test"]
    opens = [n for n in outs if n not in NOT_OPEN]
    result: dict[str, Any] = {
        "sets": per_set,
        "auroc": {score: {o: auroc(known[score], alt[o][score]) for o in opens} for score in known},
    }
    if centroids is not None:
        result["centroids"] = centroid_stats(centroids, outs.get("train_eval"))
    return result


def centroid_stats(
    centroids: np.ndarray, train: Mapping[str, np.ndarray] | None = None
) -> dict[str, float]:
    """Centroid norms, distance to the nearest other centroid and, given the training images'
    outputs, ``drift``: mean ``||c_k - mean_k|| / ||mean_k||`` against the class means of the
    final direct features (0 when the memory matches the features it is compared with)."""
    c = centroids.astype(np.float64)
    dist = np.sqrt(((c[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    stats = {"norm_mean": float(_norms(c).mean()), "nearest_other_mean": float(dist.min(1).mean())}
    if train is not None:
        v, y = train["embedding"].astype(np.float64), train["labels"].astype(np.int64)
        means = np.stack([v[y == k].mean(axis=0) for k in range(len(c))])
        stats["drift"] = float((_norms(c - means) / np.maximum(_norms(means), 1e-12)).mean())
    return stats
