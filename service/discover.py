"""``python -m service.discover CAPTURE_DIR --out OUT``: group captured (or any) images into
candidate new classes with the served model (:mod:`service.discovery`).

Writes ``OUT/groups.json``, ``OUT/group-NN/`` (a class folder per group: ``training.make_split
--source OUT``, ``training.fit`` with class folders and ``python -m service.enrol --images
OUT/group-NN`` take it) and ``OUT/group-NN.png`` (contact sheets). Files that are not
decodable images are skipped and listed in groups.json. Exit 0 on success, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from service.config import load_settings
from service.discovery import (
    BATCH_SIZE,
    MIN_GROUP_SIZE,
    RELATIVE_CUT,
    discover,
    write_groups,
)
from service.errors import ModelLoadError
from service.predictor import Predictor


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service.discover",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("folder", type=Path, help="the capture folder, or any folder of images")
    p.add_argument("--model", type=Path, default=Path("models/default/model.onnx"))
    p.add_argument("--out", type=Path, required=True, help="new or empty output folder")
    p.add_argument("--method", choices=["agglomerative", "hdbscan"], default="agglomerative")
    p.add_argument(
        "--relative-cut",
        type=float,
        default=RELATIVE_CUT,
        help="agglomerative: cut the average-linkage tree at this share of the median pairwise "
        f"cosine distance (default {RELATIVE_CUT}; lower: more, tighter groups)",
    )
    p.add_argument("--min-group-size", type=int, default=MIN_GROUP_SIZE)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--providers", default="cpu", help="onnxruntime providers (as OLTR_PROVIDERS)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    problem = _check(args)
    if problem:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {problem}", file=sys.stderr)
        return 2
    try:
        model = Predictor.load(args.model, load_settings(providers=args.providers))
    except ModelLoadError as err:
        print(f"{parser.prog}: error: {err.message}", file=sys.stderr)
        return 2
    found = discover(
        args.folder,
        model,
        method=args.method,
        relative_cut=args.relative_cut,
        min_group_size=args.min_group_size,
        batch_size=args.batch_size,
        progress=True,
    )
    params = {
        "model": str(args.model),
        "method": args.method,
        "relative_cut": args.relative_cut,
        "min_group_size": args.min_group_size,
    }
    path = write_groups(found, args.out, params)
    sizes = [len(g) for g in found.groups()]
    print(
        f"{len(found.files)} images -> {len(sizes)} groups {sizes}, "
        f"{len(found.ungrouped())} ungrouped, {len(found.skipped)} skipped: {path}"
    )
    for skipped in found.skipped:
        print(f"skipped {skipped.file}: {skipped.reason}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> str | None:
    if not args.folder.is_dir():
        return f"not a folder: {args.folder}"
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        return f"--out {args.out} exists and is not an empty folder"
    if args.out.resolve().is_relative_to(args.folder.resolve()):
        return f"--out {args.out} must not be inside {args.folder}"
    if args.relative_cut <= 0 or args.min_group_size < 1 or args.batch_size < 1:
        return "--relative-cut must be > 0, --min-group-size and --batch-size >= 1"
    return None


if __name__ == "__main__":
    sys.exit(main())
