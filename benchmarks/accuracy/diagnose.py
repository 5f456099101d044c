"""``python -m benchmarks.accuracy.diagnose RUN_DIR``: why does reachability rank unknowns badly?

Loads a training run's stage-2 checkpoint (any ``training.fit`` run), evaluates it on the run's
own test and open-test images and prints, as JSON: AUROC of reachability, max softmax and
energy; the same reachability after resetting the centroids to the class means of the final
features (do stale centroids explain it?); the AUROC of the feature norm and of the cosine to
the nearest centroid; mean feature norms and nearest-centroid distances; centroid norm and drift.
With ``--far FOLDER`` (e.g. the extracted ImageNet sample in ~/.cache/oltr/bench-accuracy) it
also scores those images as a far open set: AUROC against the known test images and the share
each score rejects at the run's own calibrated threshold (``metrics.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.accuracy.branches import init_centroids
from benchmarks.accuracy.scoring import alternative_scores, centroid_stats, scored
from oltr_contract.scores import COMBINED, COMBINED_PARTS, combined, is_known
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.data import DataError, ImageDataset, eval_transform, list_images, load_split
from training.engine import predict
from training.metrics import auroc
from training.run_data import RunData


def _outputs(model, data: RunData, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    device = torch.device("cpu")
    return {n: predict(model, data.loader(n), device, n) for n in names}


def _aurocs(known: dict[str, np.ndarray], unknown: dict[str, np.ndarray]) -> dict[str, float]:
    k, u = scored(known).scores, scored(unknown).scores
    return {name: auroc(k[name], u[name]) for name in k}


def _all_scores(out: dict[str, np.ndarray], thresholds: dict[str, float]) -> dict[str, np.ndarray]:
    """Every computed score, plus ``combined`` with the run's part thresholds as parameters."""
    scores = dict(scored(out).scores)
    if COMBINED in thresholds:
        scores[COMBINED] = combined(scores, {p: thresholds[p] for p in COMBINED_PARTS})
    return scores


def _far_rejection(
    run_dir: Path, model, cfg, known: dict[str, np.ndarray], far: Path
) -> dict[str, Any]:
    """AUROC (known test vs ``far``) and the share of ``far`` rejected, per reported score."""
    images = list_images(far)
    if not images:
        raise DataError(f"--far {far}: no images found")
    loader = DataLoader(
        ImageDataset([(p, -1) for p in images], eval_transform(cfg.data)),
        batch_size=cfg.eval.batch_size,
    )
    outs = predict(model, loader, torch.device("cpu"), "far")
    reported = json.loads((run_dir / "metrics.json").read_text())["oltr"]["open_set"]["scores"]
    thresholds = {name: entry["threshold"] for name, entry in reported.items()}
    known_scores, far_scores = _all_scores(known, thresholds), _all_scores(outs, thresholds)
    return {
        "images": len(images),
        **{
            name: {
                "auroc": auroc(known_scores[name], far_scores[name]),
                "rejected_at_threshold": float(
                    (~is_known(far_scores[name], thresholds[name])).mean()
                ),
            }
            for name in thresholds
        },
    }


def diagnose(run_dir: Path, far: Path | None = None) -> dict[str, Any]:
    """The diagnostics of ``run_dir``'s stage-2 model on its own test and open-test images."""
    model, cfg = model_from_checkpoint(load_checkpoint(run_dir / "checkpoints" / "stage2.pt"))
    data = RunData.from_split(load_split(cfg.data), cfg)
    outs = _outputs(model, data, ["train_eval", "test", "open_test"])
    far_result = None if far is None else _far_rejection(run_dir, model, cfg, outs["test"], far)
    known, unknown = outs["test"], outs["open_test"]
    centroids = model.centroids.detach().numpy().copy()
    alt_k = alternative_scores(known["embedding"], centroids)
    alt_u = alternative_scores(unknown["embedding"], centroids)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "auroc": _aurocs(known, unknown),
        "auroc_feature_norm": auroc(alt_k["feature_norm"], alt_u["feature_norm"]),
        "auroc_cosine_to_centroid": auroc(alt_k["cosine"], alt_u["cosine"]),
        "feature_norm_mean": {
            "known": float(alt_k["feature_norm"].mean()),
            "open": float(alt_u["feature_norm"].mean()),
        },
        "min_dist_mean": {
            "known": float(known["distance"].mean()),
            "open": float(unknown["distance"].mean()),
        },
        "centroids": centroid_stats(centroids, outs["train_eval"]),
    }
    init_centroids(model, data.eval_sets["train_eval"], torch.device("cpu"), cfg.eval.batch_size)
    fresh = _outputs(model, data, ["test", "open_test"])
    result["auroc_after_recomputing_centroids"] = _aurocs(fresh["test"], fresh["open_test"])
    if far_result is not None:
        result["far"] = far_result
    return result


def main(argv: list[str] | None = None) -> int:
    """Print the diagnostics of each run directory as JSON; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy.diagnose", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run_dirs", type=Path, nargs="+", help="training.fit run directories")
    parser.add_argument("--far", type=Path, help="a folder of far-open images to score as well")
    args = parser.parse_args(argv)
    try:
        results = [diagnose(d, args.far) for d in args.run_dirs]
    except (CheckpointError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
