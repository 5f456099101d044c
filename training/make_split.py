"""Build an open long-tailed split from class folders.

    python -m training.make_split --source data/cifar10/train --test-source data/cifar10/test \\
        --out data/splits/cifar10-lt --open cat,deer,dog,horse

Writes train.txt, val.txt, test.txt, open_val.txt, open_test.txt (``relative/path label``, -1 for
open-set images), classes.txt and summary.json into --out. Paths are relative to the common root
of --source and --test-source, recorded in summary.json. The count profile and how classes are
cut are documented in :mod:`training.data.split`. Use the result with
``data.kind=lists data.split_dir=OUT``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from training.data.errors import DataError
from training.data.folders import require_dir, scan_class_folders
from training.data.split import SplitSpec, build_split, write_split


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command-line interface of ``python -m training.make_split``."""
    p = argparse.ArgumentParser(
        prog="python -m training.make_split", description=__doc__.split("\n")[0], add_help=add_help
    )
    p.add_argument("--source", required=True, help="folder of class folders (train images)")
    p.add_argument("--test-source", help="folder of class folders for the balanced test split")
    p.add_argument("--out", required=True, help="output folder for the list files")
    p.add_argument(
        "--known", type=_names, help="known classes in label order (default: all but --open)"
    )
    p.add_argument("--open", type=_names, default=[], help="held-out open-set classes")
    p.add_argument("--profile", choices=["pareto", "exp"], default="pareto")
    p.add_argument("--max", type=int, default=500, dest="max_count", help="most train images")
    p.add_argument("--min", type=int, default=5, dest="min_count", help="fewest train images")
    p.add_argument("--alpha", type=float, default=6.0, help="Pareto power (paper: 6)")
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--test-per-class", type=int, help="default: as many as every class allows")
    p.add_argument("--open-val-share", type=float, default=0.5)
    p.add_argument("--open-per-class", type=int, help="cap per open class in each open split")
    p.add_argument("--seed", type=int, default=0)
    return p


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _relative(found: dict[str, list[Path]], root: Path) -> dict[str, list[str]]:
    return {c: [p.relative_to(root).as_posix() for p in ps] for c, ps in found.items()}


def run(args: argparse.Namespace) -> Path:
    """Scan the folders, build the split and write it; return the output folder."""
    source = require_dir(args.source, "--source").resolve()
    test_dir = (
        require_dir(args.test_source, "--test-source").resolve() if args.test_source else None
    )
    root = Path(os.path.commonpath([source, test_dir])) if test_dir else source
    found = scan_class_folders(source)
    known = args.known or [c for c in found if c not in set(args.open)]
    spec = SplitSpec(
        known=tuple(known),
        open=tuple(args.open),
        profile=args.profile,
        max_count=args.max_count,
        min_count=args.min_count,
        alpha=args.alpha,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        open_val_share=args.open_val_share,
        open_per_class=args.open_per_class,
        seed=args.seed,
    )
    test_found = _relative(scan_class_folders(test_dir), root) if test_dir else None
    built = build_split(_relative(found, root), spec, test_found)
    return write_split(built, Path(args.out).expanduser(), root=str(root), spec=spec)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 with a one-line message on bad input)."""
    args = get_args_parser().parse_args(argv)
    try:
        out = run(args)
    except DataError as err:
        print(f"make_split: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote split to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
