"""Frozen-backbone feature extraction: onnxruntime against eager torch, side by side.

    python benchmarks/bench_feature_cache.py [--backbones efficientnet_lite0 efficientnet_lite2]
        [--size 224] [--images 256] [--batch 64] [--rounds 3]

What ``training.feature_cache.BackboneFeatures`` runs when a fit caches a frozen backbone's
features (``data.cached_views``, the photos preset) and when the accuracy benchmark caches its
pretrained protocols: ``runtime="torch"`` and ``runtime="onnxruntime"`` on the same random
images, alternating round by round so that both see the same machine load. Reports images per
second of each and their ratio per round, and the largest difference between the two outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import ModelConfig  # noqa: E402
from training.feature_cache import BackboneFeatures  # noqa: E402
from training.models import build_model  # noqa: E402


def rate(
    features: BackboneFeatures, images: torch.Tensor, batch: int
) -> tuple[float, torch.Tensor]:
    """Images per second over ``images`` in batches of ``batch``, and the outputs."""
    started = time.perf_counter()
    out = torch.cat([features(images[i : i + batch]) for i in range(0, len(images), batch)])
    return len(images) / (time.perf_counter() - started), out


def measure(backbone: str, args: argparse.Namespace) -> dict[str, object]:
    cfg = ModelConfig(backbone=backbone, pretrained="pypi", small_input=False)
    model = build_model(cfg, num_classes=2, input_size=args.size).eval()
    cpu = torch.device("cpu")
    started = time.perf_counter()
    runtimes = {
        "torch": BackboneFeatures(model, cpu, pooled=True, runtime="torch"),
        "onnxruntime": BackboneFeatures(model, cpu, pooled=True, runtime="onnxruntime"),
    }
    export_seconds = time.perf_counter() - started
    images = torch.rand(
        args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)
    )
    rounds = []
    for _ in range(args.rounds):
        row = {name: rate(features, images, args.batch) for name, features in runtimes.items()}
        diff = float((row["torch"][1] - row["onnxruntime"][1]).abs().max())
        speeds = {name: round(r[0], 1) for name, r in row.items()}
        ratio = round(speeds["onnxruntime"] / speeds["torch"], 2)
        rounds.append({"images_per_s": speeds, "ratio": ratio, "max_abs_diff": diff})
        print(backbone, json.dumps(rounds[-1]), flush=True)
    return {"backbone": backbone, "export_s": round(export_seconds, 1), "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"]
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [measure(b, args) for b in args.backbones]
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
