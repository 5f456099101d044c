"""ImageNet-LT / Places-LT list files: one ``relative/path label`` per line.

Label ``-1`` marks an open-set (unknown) image. Paths are relative to a separate image root.
Blank lines are ignored; anything else that does not parse raises :class:`DataError` naming the
file and the 1-based line number.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from oltr_contract.atomic import write_text_atomic
from training.data.errors import DataError

OPEN_LABEL = -1
"""The label of open-set images in list files and datasets."""


def read_list(
    path: str | Path, *, num_classes: int | None = None, allow_open: bool = True
) -> list[tuple[str, int]]:
    """Parse a list file into ``(relative_path, label)`` pairs, in file order.

    ``num_classes`` (when given) rejects labels ``>= num_classes``; ``allow_open=False`` rejects
    the open-set label ``-1`` (e.g. in a training list).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read list file {path}: {err}") from err
    entries = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            entry = _parse_line(raw, f"{path}:{lineno}")
            _check_label(entry[1], f"{path}:{lineno}", num_classes, allow_open)
            entries.append(entry)
    return entries


def _parse_line(raw: str, where: str) -> tuple[str, int]:
    fields = raw.split()
    if len(fields) == 1 and _is_int(fields[0]):
        raise DataError(f"{where}: empty path before label {fields[0]!r}")
    if len(fields) != 2:
        raise DataError(
            f"{where}: expected 2 fields 'relative/path label', got {len(fields)}: {raw.strip()!r}"
        )
    rel, label_text = fields
    if not _is_int(label_text):
        raise DataError(f"{where}: label {label_text!r} is not an integer")
    return rel, int(label_text)


def _check_label(label: int, where: str, num_classes: int | None, allow_open: bool) -> None:
    if label < OPEN_LABEL:
        raise DataError(f"{where}: label {label} is below -1 (-1 marks open-set images)")
    if label == OPEN_LABEL and not allow_open:
        raise DataError(f"{where}: open-set label -1 is not allowed in this list")
    if num_classes is not None and label >= num_classes:
        raise DataError(f"{where}: label {label} is out of range for {num_classes} classes")


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def write_list(path: str | Path, entries: Iterable[tuple[str, int]]) -> None:
    """Write ``(relative_path, label)`` pairs as a list file, atomically (tmp file + rename)."""
    path = Path(path)
    lines = []
    for rel, label in entries:
        rel = str(rel)
        if not rel or len(rel.split()) != 1 or rel != rel.strip():
            raise DataError(f"{path}: cannot write path {rel!r} (empty or contains whitespace)")
        _check_label(int(label), str(path), None, True)
        lines.append(f"{rel} {int(label)}\n")
    write_text_atomic(path, "".join(lines))
