"""The open long-tailed split builder (a pure function) and its on-disk form.

Count profile. Known classes are ranked ``i = 0 .. K-1`` and ``x_i = i / (K - 1)``:

- ``pareto`` (the paper's ImageNet-LT / Places-LT recipe, power ``alpha = 6``): the Pareto
  type II (Lomax) survival curve ``n_i = max * (1 + c * x_i) ** -alpha`` with
  ``c = (max / min) ** (1 / alpha) - 1``, so ``n_0 = max`` and ``n_{K-1} = min``. It falls fast
  over the head and flattens over the tail. For K=6, max=400, min=5 it gives
  400, 124, 47, 20, 10, 5: two many-shot (> 100), two medium (20..100) and two few-shot (< 20).
- ``exp``: ``n_i = max * (min / max) ** x_i`` (the CIFAR-LT imbalance-ratio curve).

Counts are rounded half up and are monotone non-increasing in ``i``; which class gets which rank
is a permutation seeded by ``seed``. Each class's images are shuffled by their own seeded
generator (independent of the other classes) and cut into train, then val, then (without a
separate test source) a class-balanced test. Open classes are split between ``open_val`` and
``open_test``.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from oltr_contract.atomic import write_text_atomic
from training.config import EvalConfig
from training.data.errors import DataError
from training.data.listfile import write_list

Profile = Literal["pareto", "exp"]
Entries = list[tuple[str, int]]
SPLIT_NAMES = ("train", "val", "test", "open_val", "open_test")
SUMMARY_FILE = "summary.json"
CLASSES_FILE = "classes.txt"
_EVAL_DEFAULTS = EvalConfig()


def profile_counts(
    num_classes: int, *, profile: Profile, max_count: int, min_count: int, alpha: float = 6.0
) -> list[int]:
    """Training images per rank, from ``max_count`` (rank 0) down to ``min_count`` (last)."""
    if num_classes < 1:
        raise DataError("a split needs at least one known class")
    if not 1 <= min_count <= max_count:
        raise DataError(f"need 1 <= min ({min_count}) <= max ({max_count})")
    if alpha <= 0:
        raise DataError(f"alpha must be positive, got {alpha}")
    if num_classes == 1:
        return [max_count]
    ratio = max_count / min_count
    c = ratio ** (1.0 / alpha) - 1.0
    counts = []
    for i in range(num_classes):
        x = i / (num_classes - 1)
        if profile == "pareto":
            value = max_count * (1.0 + c * x) ** -alpha
        elif profile == "exp":
            value = max_count * ratio**-x
        else:
            raise DataError(f"unknown profile {profile!r}; use 'pareto' or 'exp'")
        counts.append(min(max_count, max(min_count, math.floor(value + 0.5))))
    return counts


def shot_group(
    count: int,
    *,
    many_shot: int = _EVAL_DEFAULTS.many_shot,
    few_shot: int = _EVAL_DEFAULTS.few_shot,
) -> str:
    """``many`` above ``many_shot`` training images, ``few`` below ``few_shot``, else ``medium``."""
    if count > many_shot:
        return "many"
    if count < few_shot:
        return "few"
    return "medium"


@dataclass(frozen=True)
class SplitSpec:
    """Parameters of :func:`build_split` (the ``make_split`` command line)."""

    known: tuple[str, ...]
    open: tuple[str, ...] = ()
    profile: Profile = "pareto"
    max_count: int = 500
    min_count: int = 5
    alpha: float = 6.0
    val_per_class: int = 20
    test_per_class: int | None = None
    """None: as many as every known class allows (balanced)."""
    open_val_share: float = 0.5
    """Share of each open class's images that goes to open_val (ignored with a test source:
    open_val then comes from the source, open_test from the test source)."""
    open_per_class: int | None = None
    """Cap on the images per open class in each of open_val and open_test (None: no cap)."""
    seed: int = 0
    many_shot: int = _EVAL_DEFAULTS.many_shot
    few_shot: int = _EVAL_DEFAULTS.few_shot

    def __post_init__(self) -> None:
        object.__setattr__(self, "known", tuple(self.known))
        object.__setattr__(self, "open", tuple(self.open))
        if not self.known:
            raise DataError("no known classes")
        for names, what in ((self.known, "known"), (self.open, "open")):
            dupes = _duplicates(names)
            if dupes:
                raise DataError(f"{what} classes listed twice: {', '.join(dupes)}")
        both = sorted(set(self.known) & set(self.open))
        if both:
            raise DataError(f"classes both known and open: {', '.join(both)}")
        if not 0.0 <= self.open_val_share <= 1.0:
            raise DataError(f"open_val_share must be in [0, 1], got {self.open_val_share}")
        if self.val_per_class < 0 or (self.test_per_class is not None and self.test_per_class < 1):
            raise DataError("val_per_class must be >= 0 and test_per_class >= 1")


@dataclass
class BuiltSplit:
    """The result of :func:`build_split`: list-file entries with root-relative paths."""

    class_names: list[str]
    train_counts: list[int]
    shot_groups: list[str]
    test_per_class: int
    splits: dict[str, Entries] = field(default_factory=dict)

    def summary(self, root: str, spec: SplitSpec) -> dict[str, Any]:
        """The ``summary.json`` content for this split."""
        return {
            "root": root,
            "files": {name: f"{name}.txt" for name in SPLIT_NAMES},
            "classes": self.class_names,
            "open_classes": list(spec.open),
            "train_counts": dict(zip(self.class_names, self.train_counts, strict=True)),
            "shot_groups": dict(zip(self.class_names, self.shot_groups, strict=True)),
            "shot_thresholds": {"many_shot": spec.many_shot, "few_shot": spec.few_shot},
            "sizes": {name: len(self.splits[name]) for name in SPLIT_NAMES},
            "profile": {
                "name": spec.profile,
                "max": spec.max_count,
                "min": spec.min_count,
                "alpha": spec.alpha,
            },
            "val_per_class": spec.val_per_class,
            "test_per_class": self.test_per_class,
            "open_val_share": spec.open_val_share,
            "open_per_class": spec.open_per_class,
            "seed": spec.seed,
        }


def build_split(
    source: Mapping[str, Sequence[str]],
    spec: SplitSpec,
    test_source: Mapping[str, Sequence[str]] | None = None,
) -> BuiltSplit:
    """Build an open long-tailed split from ``class name -> image paths`` maps (pure).

    Paths are used as given (make them relative to a common root first) and must be distinct
    across ``source`` and ``test_source``. The same inputs and seed give the same split.
    """
    _require_classes(source, spec.known + spec.open, "source")
    if test_source is not None:
        _require_classes(test_source, spec.known + spec.open, "test source")
    ranked = profile_counts(
        len(spec.known),
        profile=spec.profile,
        max_count=spec.max_count,
        min_count=spec.min_count,
        alpha=spec.alpha,
    )
    order = list(range(len(spec.known)))
    random.Random(f"oltr-counts:{spec.seed}").shuffle(order)
    counts = [ranked[r] for r in order]
    pools = {c: _shuffled(source[c], spec.seed, c) for c in spec.known}
    test_n = _test_per_class(pools, counts, spec, test_source)
    splits: dict[str, Entries] = {name: [] for name in SPLIT_NAMES}
    for label, (name, n) in enumerate(zip(spec.known, counts, strict=True)):
        pool = pools[name]
        _require_enough(name, len(pool), n, spec.val_per_class, 0 if test_source else test_n)
        cut = n + spec.val_per_class
        test_pool = (
            _shuffled(test_source[name], spec.seed, f"test:{name}") if test_source else pool[cut:]
        )
        splits["train"] += _labelled(pool[:n], label)
        splits["val"] += _labelled(pool[n:cut], label)
        splits["test"] += _labelled(test_pool[:test_n], label)
    for name in spec.open:
        open_val, open_test = _open_parts(name, source, test_source, spec)
        splits["open_val"] += _labelled(open_val, -1)
        splits["open_test"] += _labelled(open_test, -1)
    groups = [shot_group(n, many_shot=spec.many_shot, few_shot=spec.few_shot) for n in counts]
    return BuiltSplit(list(spec.known), counts, groups, test_n, splits)


def _require_classes(source: Mapping[str, Sequence[str]], names: Sequence[str], what: str) -> None:
    missing = [n for n in names if n not in source]
    if missing:
        raise DataError(
            f"{what} has no class {', '.join(map(repr, missing))}; "
            f"available: {', '.join(sorted(source)) or '(none)'}"
        )


def _shuffled(paths: Sequence[str], seed: int, key: str) -> list[str]:
    items = sorted(str(p) for p in paths)
    random.Random(f"oltr-split:{seed}:{key}").shuffle(items)
    return items


def _labelled(paths: Sequence[str], label: int) -> Entries:
    return [(p, label) for p in sorted(paths)]


def _test_per_class(
    pools: Mapping[str, list[str]],
    counts: Sequence[int],
    spec: SplitSpec,
    test_source: Mapping[str, Sequence[str]] | None,
) -> int:
    if spec.test_per_class is not None:
        if test_source is not None:
            for name in spec.known:
                _require_enough(name, len(test_source[name]), 0, 0, spec.test_per_class, "test ")
        return spec.test_per_class
    if test_source is not None:
        available = {c: len(test_source[c]) for c in spec.known}
    else:
        available = {
            c: len(pools[c]) - n - spec.val_per_class
            for c, n in zip(spec.known, counts, strict=True)
        }
    name = min(available, key=lambda c: available[c])
    if available[name] < 1:
        raise DataError(
            f"class {name!r} has no images left for a test split "
            f"({len(pools[name])} images, {spec.val_per_class} val)"
        )
    return available[name]


def _require_enough(
    name: str, available: int, train: int, val: int, test: int, where: str = ""
) -> None:
    needed = train + val + test
    if available < needed:
        raise DataError(
            f"class {name!r} has {available} {where}images but the split needs {needed} "
            f"(train {train} + val {val} + test {test})"
        )


def _open_parts(
    name: str,
    source: Mapping[str, Sequence[str]],
    test_source: Mapping[str, Sequence[str]] | None,
    spec: SplitSpec,
) -> tuple[list[str], list[str]]:
    pool = _shuffled(source[name], spec.seed, f"open:{name}")
    cap = spec.open_per_class if spec.open_per_class is not None else len(pool)
    if test_source is not None:
        test_pool = _shuffled(test_source[name], spec.seed, f"open-test:{name}")
        test_cap = spec.open_per_class if spec.open_per_class is not None else len(test_pool)
        return pool[:cap], test_pool[:test_cap]
    k = math.floor(spec.open_val_share * len(pool) + 0.5)
    return pool[:k][:cap], pool[k:][:cap]


def write_split(built: BuiltSplit, out_dir: str | Path, *, root: str, spec: SplitSpec) -> Path:
    """Write the list files, ``classes.txt`` and ``summary.json`` into ``out_dir``.

    ``root`` is recorded in the summary: absolute, or relative to ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        write_list(out / f"{name}.txt", built.splits[name])
    write_text_atomic(out / CLASSES_FILE, "".join(f"{c}\n" for c in built.class_names))
    summary = built.summary(root, spec)
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return out


def read_summary(split_dir: str | Path) -> dict[str, Any]:
    """Load ``summary.json`` of a split folder; errors name the file."""
    path = Path(split_dir).expanduser() / SUMMARY_FILE
    if not path.is_file():
        raise DataError(f"split summary not found: {path} (write it with training.make_split)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read split summary {path}: {err}") from err
    if not isinstance(summary, dict) or not isinstance(summary.get("root"), str):
        raise DataError(f"{path}: expected an object with a string 'root'")
    return summary


def read_classes(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines ignored); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"classes file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{path}: no class names")
    dupes = _duplicates(names)
    if dupes:
        raise DataError(f"{path}: class names listed twice: {', '.join(dupes)}")
    return names


def _duplicates(names: Sequence[str]) -> list[str]:
    return sorted(n for n, k in Counter(names).items() if k > 1)
