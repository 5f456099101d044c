"""``python -m benchmarks.accuracy``: the open long-tailed accuracy benchmark on real images.

Needs ``../shared/data`` (CIFAR-10 and the ImageNet sample; see its README). The quick
configuration is sized for a 2-core CPU (its measured time: docs/BENCHMARKS.md) and
``--optional`` adds the rows it leaves out; ``--full`` is for a GPU. Finished runs are kept in the
work folder and skipped when the command is repeated (delete it to start over).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from benchmarks.accuracy import reporting
from benchmarks.accuracy.datasets import DEFAULT_CACHE, SHARED_DATA
from benchmarks.accuracy.runner import Benchmark
from benchmarks.accuracy.settings import load_bench_config
from training.config import ConfigError
from training.data import DataError

RESULTS_DIR = Path(__file__).resolve().parent / "results"
log = logging.getLogger("benchmarks.accuracy")


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.accuracy``."""
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default="quick",
        help="bundled config name (quick, full) or a YAML file (default: quick)",
    )
    p.add_argument("--full", action="store_true", help="shorthand for --config full (GPU)")
    p.add_argument("--protocols", help="comma-separated protocol names (default: all)")
    p.add_argument(
        "--out", type=Path, help="report folder (default: benchmarks/accuracy/results/NAME)"
    )
    p.add_argument(
        "--work", type=Path, help="checkpoints and per-run results (default: CACHE/work/NAME)"
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"extracted images and splits (default: {DEFAULT_CACHE})",
    )
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="the shared data folder")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument(
        "--optional",
        action="store_true",
        help="also run the methods the config marks optional (quick: A's fine-tuned rows and "
        "the closed-set OLTR rows, about 40 min more on 2 cores)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from finished runs without training",
    )
    return p


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2: bad config or missing data)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("training").setLevel(logging.WARNING)
    started = time.monotonic()
    try:
        bench = load_bench_config("full" if args.full else args.config)
        protocols = args.protocols.split(",") if args.protocols else list(bench.protocols)
        unknown = [p for p in protocols if p not in bench.protocols]
        if unknown:
            raise ConfigError(f"unknown protocol(s) {unknown}; have {list(bench.protocols)}")
        cache = args.cache.expanduser()
        work = (args.work or cache / "work" / bench.name).expanduser()
        out = args.out or RESULTS_DIR / bench.name
        runner = Benchmark(
            bench,
            work=work,
            cache=cache,
            data_dir=args.data,
            device=_device(args.device),
            optional=args.optional,
        )
        if not args.report_only:
            for name in protocols:
                runner.run_protocol(name, bench.protocols[name])
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta = {
        "command": f"python -m benchmarks.accuracy {shlex.join(argv or sys.argv[1:])}".strip(),
        "wall time of this invocation": f"{elapsed / 60:.1f} min",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"device {runner.device}",
        "torch": torch.__version__,
        "date": now,
    }
    previous = out / "results.json"
    if args.report_only and previous.is_file():  # keep the timing of the run that trained
        meta = {**json.loads(previous.read_text())["meta"], "report rewritten": now}
    report = reporting.write(bench, work, out, protocols, meta)
    log.info("benchmark took %.1f min; report: %s", elapsed / 60, report)
    return 0
