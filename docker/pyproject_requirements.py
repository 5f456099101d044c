"""Print the pip requirements of this project from pyproject.toml, one per line.

Used by the Dockerfiles so the images install exactly what pyproject.toml declares, with one
twist the GPU image needs: ``onnxruntime`` (base dependency) and ``onnxruntime-gpu`` (the ``gpu``
extra) both install the same ``onnxruntime`` Python package, so they must never be installed
together. ``--drop onnxruntime --extra gpu`` yields the service requirements with the GPU wheel.

    python docker/pyproject_requirements.py pyproject.toml                      # CPU service
    python docker/pyproject_requirements.py pyproject.toml --drop onnxruntime --extra gpu
    python docker/pyproject_requirements.py pyproject.toml --extra train        # trainer

Standard library only (tomllib, Python >= 3.11): it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize(name: str) -> str:
    """PEP 503 normalised project name: lower case, runs of ``-_.`` become one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The normalised project name at the start of a PEP 508 requirement string."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a PEP 508 requirement: {requirement!r}")
    return normalize(match.group(1))


def requirements(pyproject: Path, extras: list[str], drop: list[str]) -> list[str]:
    """Base dependencies plus the given extras, minus the projects named in ``drop``."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    selected = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in optional:
            raise KeyError(
                f"{pyproject}: [project.optional-dependencies] has no extra {extra!r}; "
                f"available: {', '.join(sorted(optional))}"
            )
        selected += optional[extra]
    dropped = {normalize(name) for name in drop}
    return [req for req in selected if requirement_name(req) not in dropped]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: print the selected requirements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="optional extra to add")
    parser.add_argument("--drop", action="append", default=[], help="project name to leave out")
    args = parser.parse_args(argv)
    try:
        lines = requirements(args.pyproject, args.extra, args.drop)
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as exc:
        print(f"pyproject_requirements: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
