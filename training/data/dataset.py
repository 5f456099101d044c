"""ImageDataset: ``(path, label)`` samples -> ``(tensor, label)`` through PIL.

Images are opened with PIL, rotated by their EXIF orientation (``ImageOps.exif_transpose``) and
converted to RGB -- the same steps the service applies to uploads.

Corrupt or unreadable images (``on_corrupt``):

- ``"fail"``: loading raises :class:`DataError` naming the path (no pre-scan).
- ``"skip"``: two layers. At construction every file gets a cheap header check
  (``Image.open(...).verify()``), which catches missing files, non-images and broken headers;
  those samples are excluded (a warning names each) before ``labels`` is built, so samplers
  never see them. Damage a header check cannot see (e.g. a truncated JPEG body) surfaces when
  the pixels are decoded: ``__getitem__`` then logs a warning naming the path, remembers it,
  and returns the next readable image *of the same class* instead, so class-aware sampling
  statistics hold. Only if every image of that class is unreadable does it raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from PIL import Image, ImageOps
from torch.utils.data import Dataset

from service.pixels import to_rgb
from training.data.errors import DataError

log = logging.getLogger(__name__)

OnCorrupt = Literal["fail", "skip"]
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def load_image(path: str | Path) -> Image.Image:
    """Decode ``path`` fully as an upright 8-bit RGB image, exactly as the service decodes an
    upload (:func:`service.pixels.to_rgb`); DataError naming the path on failure."""
    try:
        with Image.open(path) as image:
            return to_rgb(ImageOps.exif_transpose(image))
    except _READ_ERRORS as err:
        raise DataError(f"cannot read image {path}: {err}") from err


def header_ok(path: str | Path) -> str | None:
    """Cheap integrity check (PIL ``verify``); None when fine, else the reason."""
    try:
        with Image.open(path) as image:
            image.verify()
    except _READ_ERRORS as err:
        return str(err) or type(err).__name__
    return None


class ImageDataset(Dataset):
    """Images and labels for a DataLoader; ``labels`` lists the label of every kept sample."""

    def __init__(
        self,
        samples: Sequence[tuple[str | Path, int]],
        transform: Callable[[Image.Image], Any] | None = None,
        on_corrupt: OnCorrupt = "fail",
    ) -> None:
        if on_corrupt not in ("fail", "skip"):
            raise ValueError(f"on_corrupt must be 'fail' or 'skip', got {on_corrupt!r}")
        self.transform = transform
        self.on_corrupt = on_corrupt
        self.skipped: list[Path] = []
        kept = [(Path(p), int(y)) for p, y in samples]
        if on_corrupt == "skip":
            kept = [s for s in kept if self._passes_scan(s[0])]
        self.samples = kept
        self.labels = [y for _, y in kept]
        self._unreadable: set[int] = set()

    def _passes_scan(self, path: Path) -> bool:
        reason = header_ok(path)
        if reason is None:
            return True
        log.warning("skipping unreadable image %s: %s", path, reason)
        self.skipped.append(path)
        return False

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        image = load_image(path) if self.on_corrupt == "fail" else self._load_or_substitute(index)
        return (self.transform(image) if self.transform else image), label

    def _load_or_substitute(self, index: int) -> Image.Image:
        label = self.labels[index]
        n = len(self.samples)
        for step in range(n):
            candidate = (index + step) % n
            if self.labels[candidate] != label or candidate in self._unreadable:
                continue
            try:
                return load_image(self.samples[candidate][0])
            except DataError as err:
                log.warning("skipping %s", err)
                self._unreadable.add(candidate)
        raise DataError(
            f"every image with label {label} is unreadable (last: {self.samples[index][0]})"
        )
