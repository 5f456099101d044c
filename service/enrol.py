"""``python -m service.enrol``: enrolment offline, the CLI twin of ``POST /admin/classes``.

    python -m service.enrol add --model models/default/model.onnx --name 6 \\
        --images captured/group-01 --out models/default-6
    python -m service.enrol remove --model models/default-6/model.onnx --name 6 --out models/x
    python -m service.enrol list --model models/default-6/model.onnx
    python -m service.enrol reference --model M --images TRAIN_ROOT   # class folders; in place

Images are decoded exactly as ``/classify`` decodes them (EXIF, RGB, resize, centre crop).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.config import DEFAULT_MAX_IMAGE_PIXELS
from service.enrolment import Artifact, Example, enrol, remove, with_reference, write_model
from service.errors import ServiceError
from service.preprocessing import PreprocessSpec, image_to_input

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, sorted; hidden names skipped)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_examples(paths: Sequence[Path], spec: PreprocessSpec) -> list[Example]:
    """Decode ``paths``; a file that is no image stops with its name (nothing is written)."""
    examples = []
    for path in paths:
        data = path.read_bytes()
        try:
            examples.append(
                Example.of(image_to_input(data, spec, max_pixels=DEFAULT_MAX_IMAGE_PIXELS), data)
            )
        except ServiceError as err:
            raise ValueError(f"{path}: {err.message}") from err
    return examples


def _add(args: argparse.Namespace, artifact: Artifact) -> str:
    paths = image_files(args.images)
    if not paths:
        raise ValueError(f"no images in {args.images}")
    new = enrol(artifact, args.name, read_examples(paths, artifact.preprocess_spec))
    path = write_model(new, args.out)
    return f"enrolled {args.name!r} from {len(paths)} images: {path} (version {new.version})"


def _remove(args: argparse.Namespace, artifact: Artifact) -> str:
    new = remove(artifact, args.name)
    path = write_model(new, args.out)
    return f"removed {args.name!r}: {path} (version {new.version})"


def _list(args: argparse.Namespace, artifact: Artifact) -> str:
    lines = [f"model {artifact.version}"]
    for i, name in enumerate(artifact.class_names):
        lines.append(f"{i:4d}  {name}{'  (enrolled)' if i >= artifact.base_classes else ''}")
    return "\n".join(lines)


def _reference(args: argparse.Namespace, artifact: Artifact) -> str:
    spec, names = artifact.preprocess_spec, artifact.class_names
    pixels: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    for index, name in enumerate(names[: artifact.base_classes]):
        examples = read_examples(image_files(args.images / name), spec)
        pixels += [e.pixels for e in examples]
        labels += [index] * len(examples)
    new = with_reference(artifact, np.stack(pixels), np.asarray(labels, dtype=np.int64))
    path = write_model(new, args.model.parent)
    return f"imprint reference from {len(pixels)} images written into {path}"


COMMANDS = {"add": _add, "remove": _remove, "list": _list, "reference": _reference}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m service.enrol", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("add", "a new model with one class more, learnt from a folder of images"),
        ("remove", "a new model without an enrolled class"),
        ("list", "the model's classes"),
        ("reference", "store the imprint reference of the training images (class folders)"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--model", type=Path, required=True, help="model.onnx to start from")
        if name in ("add", "remove"):
            cmd.add_argument("--name", required=True, help="the class name")
            cmd.add_argument("--out", type=Path, required=True, help="folder for the new model")
        if name in ("add", "reference"):
            cmd.add_argument("--images", type=Path, required=True, help="image folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one enrolment command; returns the exit code (1 with a message on bad input)."""
    args = get_args_parser().parse_args(argv)
    try:
        artifact = Artifact.read(args.model)
        print(COMMANDS[args.command](args, artifact))
    except (OSError, ValueError, ServiceError) as err:
        message = err.message if isinstance(err, ServiceError) else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
