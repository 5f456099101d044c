"""ImageFolder-style directories: ``root/<class>/<image>`` and open-set folders of any layout."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from training.data.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
"""File extensions treated as images (compared case-insensitively)."""


def is_image_file(path: str | Path) -> bool:
    """True when the file name ends in one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def require_dir(path: str | Path, what: str) -> Path:
    """Return ``path`` (user-expanded) or raise a DataError naming it when it is not a folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{what} folder not found: {path}")
    return path


def list_images(root: str | Path) -> list[Path]:
    """All image files below ``root`` (recursive, symlinks followed), sorted by path."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(folder, f) for f in files if not f.startswith(".") and is_image_file(f))
    return sorted(found)


def class_folder_names(root: str | Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``root``."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def scan_class_folders(
    root: str | Path, classes: Sequence[str] | None = None, *, require_all: bool = True
) -> dict[str, list[Path]]:
    """Map each class folder of ``root`` to its images (recursive, sorted).

    ``classes`` selects and orders the classes (default: every sub-folder, sorted). A listed
    class without a folder is an error when ``require_all``, else it maps to ``[]``.
    """
    root = require_dir(root, "image")
    names = list(classes) if classes is not None else class_folder_names(root)
    result = {}
    for name in names:
        folder = root / name
        if folder.is_dir():
            result[name] = list_images(folder)
        elif require_all:
            raise DataError(f"class {name!r} has no folder {folder}")
        else:
            result[name] = []
    return result
