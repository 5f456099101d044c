"""``load_split(cfg)``: turn a DataConfig into absolute ``(path, label)`` lists per split."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from training.config import DataConfig, EvalConfig
from training.data.errors import DataError
from training.data.folders import class_folder_names, list_images, require_dir, scan_class_folders
from training.data.listfile import OPEN_LABEL, read_list
from training.data.mnist import mnist_split_dir
from training.data.split import CLASSES_FILE, SPLIT_NAMES, read_classes, read_summary, shot_group

log = logging.getLogger(__name__)

Samples = list[tuple[Path, int]]
_EVAL_DEFAULTS = EvalConfig()
_SOURCE_FIELDS = ("split_dir", "root", "classes", *SPLIT_NAMES)


@dataclass
class Split:
    """Known classes and the images of every split (absolute paths; open images labelled -1).

    Construction checks that labels fit ``class_names`` and that every known class has at least
    one training image; ``train_counts`` is derived from ``train``.
    """

    class_names: list[str]
    root: Path
    train: Samples
    val: Samples = field(default_factory=list)
    test: Samples = field(default_factory=list)
    open_val: Samples = field(default_factory=list)
    open_test: Samples = field(default_factory=list)
    train_counts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        k = len(self.class_names)
        for name in ("train", "val", "test"):
            bad = [(p, y) for p, y in getattr(self, name) if not 0 <= y < k]
            if bad:
                raise DataError(f"{name} image {bad[0][0]} has label {bad[0][1]}, not in [0, {k})")
        for name in ("open_val", "open_test"):
            setattr(self, name, [(p, OPEN_LABEL) for p, _ in getattr(self, name)])
        per_class = Counter(y for _, y in self.train)
        self.train_counts = [per_class[i] for i in range(k)]
        empty = [c for c, n in zip(self.class_names, self.train_counts, strict=True) if n == 0]
        if empty:
            raise DataError(f"known class {empty[0]!r} has no training images (root {self.root})")

    def shot_groups(
        self, *, many_shot: int = _EVAL_DEFAULTS.many_shot, few_shot: int = _EVAL_DEFAULTS.few_shot
    ) -> list[str]:
        """``many`` / ``medium`` / ``few`` per class from ``train_counts``."""
        return [shot_group(n, many_shot=many_shot, few_shot=few_shot) for n in self.train_counts]


def load_split(cfg: DataConfig) -> Split:
    """Resolve ``cfg`` (kind mnist, lists or folder) into a :class:`Split`."""
    if cfg.kind == "mnist":
        return _load_mnist(cfg)
    if cfg.kind == "lists":
        return _load_lists(cfg)
    return _load_folder(cfg)


def _load_mnist(cfg: DataConfig) -> Split:
    _reject_fields(cfg, _SOURCE_FIELDS)
    split_dir = mnist_split_dir(cfg.cache_dir, cfg.split_seed)
    lists_cfg = cfg.model_copy(update={"kind": "lists", "split_dir": str(split_dir)})
    return _load_lists(lists_cfg)


def _load_lists(cfg: DataConfig) -> Split:
    split_dir = Path(cfg.split_dir).expanduser() if cfg.split_dir else None
    summary = read_summary(split_dir) if split_dir else {}
    root = _lists_root(cfg, split_dir, summary)
    files = {name: _list_file(cfg, name, split_dir, summary) for name in SPLIT_NAMES}
    if files["train"] is None:
        raise DataError("kind=lists needs data.train (a list file) or data.split_dir")
    classes = _list_classes(cfg, split_dir)
    k = len(classes) if classes is not None else None
    train = read_list(files["train"], num_classes=k, allow_open=False)
    if not train:
        raise DataError(f"training list {files['train']} has no entries")
    if classes is None:
        classes = [str(i) for i in range(max(y for _, y in train) + 1)] if train else []
    known: dict[str, Samples] = {"train": _absolute(root, train), "val": [], "test": []}
    opened: dict[str, Samples] = {"open_val": [], "open_test": []}
    for name, open_name in (("val", "open_val"), ("test", "open_test")):
        if files[name] is not None:
            entries = _absolute(root, read_list(files[name], num_classes=len(classes)))
            known[name] = [e for e in entries if e[1] != OPEN_LABEL]
            opened[open_name] += [e for e in entries if e[1] == OPEN_LABEL]
        if files[open_name] is not None:
            opened[open_name] += _open_samples(files[open_name], root)
    return Split(classes, root, **known, **opened)


def _lists_root(cfg: DataConfig, split_dir: Path | None, summary: dict) -> Path:
    if cfg.root:
        return require_dir(cfg.root, "data.root image")
    if split_dir is None:
        raise DataError("kind=lists needs data.root (the image root) or data.split_dir")
    return require_dir((split_dir / summary["root"]).resolve(), f"{split_dir} summary root")


def _list_file(cfg: DataConfig, name: str, split_dir: Path | None, summary: dict) -> Path | None:
    explicit = getattr(cfg, name)
    if explicit:
        return Path(explicit).expanduser()
    if split_dir is None:
        return None
    path = split_dir / summary.get("files", {}).get(name, f"{name}.txt")
    return path if name == "train" or path.is_file() else None


def _list_classes(cfg: DataConfig, split_dir: Path | None) -> list[str] | None:
    if cfg.classes:
        return list(cfg.classes)
    if split_dir is not None and (split_dir / CLASSES_FILE).is_file():
        return read_classes(split_dir / CLASSES_FILE)
    return None


def _absolute(root: Path, entries: list[tuple[str, int]]) -> Samples:
    return [(root / rel, label) for rel, label in entries]


def _open_samples(path: Path, root: Path | None) -> Samples:
    """Open-set images: every image below a folder, or a list file's entries (relabelled -1)."""
    if path.is_dir():
        return [(p, OPEN_LABEL) for p in list_images(path)]
    if root is None:
        raise DataError(f"open-set folder not found: {path}")
    return [(p, OPEN_LABEL) for p, _ in _absolute(root, read_list(path))]


def _load_folder(cfg: DataConfig) -> Split:
    _reject_fields(cfg, ("split_dir", "root"))
    if not cfg.train:
        raise DataError("kind=folder needs data.train (a folder of class folders)")
    train_root = require_dir(cfg.train, "data.train")
    classes = list(cfg.classes) if cfg.classes else class_folder_names(train_root)
    if not classes:
        raise DataError(f"data.train folder {train_root} has no class folders")
    samples = {"train": _folder_samples(train_root, classes, require_all=True)}
    for name in ("val", "test"):
        value = getattr(cfg, name)
        samples[name] = (
            _folder_samples(require_dir(value, f"data.{name}"), classes) if value else []
        )
    for name in ("open_val", "open_test"):
        value = getattr(cfg, name)
        samples[name] = _open_samples(require_dir(value, f"data.{name}"), None) if value else []
    return Split(classes, train_root, **samples)


def _folder_samples(root: Path, classes: list[str], *, require_all: bool = False) -> Samples:
    extra = sorted(set(class_folder_names(root)) - set(classes))
    if extra:
        log.info("ignoring folders of %s that are not known classes: %s", root, ", ".join(extra))
    found = scan_class_folders(root, classes, require_all=require_all)
    return [(p, label) for label, c in enumerate(classes) for p in found[c]]


def _reject_fields(cfg: DataConfig, names: tuple[str, ...]) -> None:
    used = [n for n in names if getattr(cfg, n) not in (None, [])]
    if used:
        raise DataError(f"data.{used[0]} is not used with data.kind={cfg.kind}")
