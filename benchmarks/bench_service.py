"""Throughput and latency of ``POST /classify`` against the in-process limit.

One run measures, on the same real JPEGs (``../shared/data/imagenet-sample-open.tar.gz``):

- ``in-process``: the service's own pipeline without HTTP (decode + preprocess in a thread
  pool, onnxruntime at each batch size; the best one is the limit the service should approach);
- ``service batched``: ``python -m service`` with micro-batching (OLTR_MAX_BATCH_SIZE from
  ``--service-batch``, default 8, the service default);
- ``service unbatched``: the same with OLTR_MAX_BATCH_SIZE=1;

at several client concurrency levels, one image per request, loopback only. Each run is
bounded by ``--requests`` and ``--max-seconds``; every figure is the best of ``--rounds`` runs
(the two services alternate; the in-process limit is measured before and after them), which
damps drifting load from other processes. The client shares the machine's CPUs with the
server.

    .venv/bin/python benchmarks/bench_service.py --model models/default/model.onnx
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.shared_data import shared_data_dir  # noqa: E402
from service.config import Settings  # noqa: E402
from service.predictor import Predictor  # noqa: E402
from service.preprocessing import image_to_input  # noqa: E402

PHOTOS = shared_data_dir() / "imagenet-sample-open.tar.gz"
MAX_PIXELS = 40_000_000


def load_photos(n: int) -> list[bytes]:
    with tarfile.open(PHOTOS, "r:gz") as tar:
        out = []
        for member in tar:
            if member.isfile() and member.name.lower().endswith((".jpeg", ".jpg")):
                out.append(tar.extractfile(member).read())
                if len(out) == n:
                    break
    return out


def percentiles(latencies: list[float]) -> dict[str, float]:
    ms = np.array(latencies) * 1000
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def bench_in_process(model: Path, photos: list[bytes], batch_sizes: list[int], seconds: float):
    """Images/s of decode + preprocess (thread pool) + onnxruntime, per batch size."""
    predictor = Predictor.load(model, Settings(model_path=model))
    spec = predictor.preprocess_spec
    predictor.warm_up(max(batch_sizes), runs=2)
    rows = []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for bs in batch_sizes:
            done, batch_times, start = 0, [], time.perf_counter()
            while time.perf_counter() - start < seconds:
                chunk = [photos[(done + i) % len(photos)] for i in range(bs)]
                t0 = time.perf_counter()
                x = np.stack(
                    list(pool.map(lambda d: image_to_input(d, spec, max_pixels=MAX_PIXELS), chunk))
                )
                predictor.run(x)
                batch_times.append(time.perf_counter() - t0)
                done += bs
            elapsed = time.perf_counter() - start
            rows.append({"batch": bs, "images_per_s": done / elapsed, **percentiles(batch_times)})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(
    model: Path, max_batch: int, log: Path, **extra_env: str
) -> tuple[subprocess.Popen, str]:
    """``python -m service`` on a free loopback port, ready; ``extra_env``: more OLTR_* settings."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLTR_")}
    env.update(
        {
            "OLTR_MODEL_PATH": str(model),
            "OLTR_PORT": str(port),
            "OLTR_MAX_BATCH_SIZE": str(max_batch),
            "OLTR_MAX_BATCH_DELAY_MS": "5",
            "OLTR_MAX_QUEUE": "1024",
            "OLTR_LOG_LEVEL": "warning",
            **extra_env,
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited: {log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"service not ready in 120 s: {log.read_text()}")


async def load_level(
    url: str, photos: list[bytes], concurrency: int, requests: int, seconds: float
):
    """``concurrency`` clients send one JPEG per request until ``requests`` or ``seconds``."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            data = photos[sent % len(photos)]
            sent += 1
            t0 = time.perf_counter()
            r = await client.post("/classify", content=data, headers={"Content-Type": "image/jpeg"})
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "images_per_s": len(latencies) / elapsed,
        **percentiles(latencies),
    }


def bench_services(
    model: Path, photos, levels, requests, seconds, rounds, max_batch: int, log_dir: Path
):
    """Both services run side by side; each level alternates them ``rounds`` times and keeps
    each one's best round, so drifting background load hits both alike."""
    configs = {"batched": max_batch, "unbatched": 1}
    procs = {
        name: start_service(model, mb, log_dir / f"service-{name}.log")
        for name, mb in configs.items()
    }
    results: dict[str, list[dict]] = {name: [] for name in configs}
    try:
        for _, url in procs.values():
            asyncio.run(load_level(url, photos, 4, 20, 10))  # client + server warm-up
        for c in levels:
            for name, (_, url) in procs.items():
                runs = []
                for _ in range(rounds):
                    runs.append(asyncio.run(load_level(url, photos, c, requests, seconds)))
                results[name].append(max(runs, key=lambda r: r["images_per_s"]))
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(30)
    return results["batched"], results["unbatched"]


def table(title: str, rows: list[dict], key: str) -> str:
    lines = [
        f"**{title}**",
        "",
        f"| {key} | images/s | p50 ms | p95 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        extra = f" ({r['errors']} errors)" if r.get("errors") else ""
        lines.append(
            f"| {r[key]} | {r['images_per_s']:.1f}{extra} | {r['p50']:.1f} | "
            f"{r['p95']:.1f} | {r['p99']:.1f} |"
        )
    return "\n".join(lines)


def load_arguments(description: str, requests: int) -> argparse.ArgumentParser:
    """The options every service load benchmark shares: model, photos and run bounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, default=REPO / "models/default/model.onnx")
    parser.add_argument("--photos", type=int, default=64, help="distinct JPEGs to cycle through")
    parser.add_argument("--requests", type=int, default=requests, help="max requests per run")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="max time per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per set-up (best counts)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = load_arguments(__doc__.split("\n\n")[0], requests=300)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="in-process batch sizes")
    parser.add_argument("--service-batch", type=int, default=8, help="batched service max batch")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args(argv)
    if not PHOTOS.is_file():
        print(f"skipped: {PHOTOS} is absent (the benchmark needs real JPEGs)")
        return 0
    if not args.model.is_file():
        print(f"error: model not found: {args.model}", file=sys.stderr)
        return 2
    photos = load_photos(args.photos)
    levels = [int(c) for c in args.concurrency.split(",")]
    print(
        f"model {args.model} | {len(photos)} photos | {platform.processor() or platform.machine()}"
        f" | {os.cpu_count()} CPUs | python {platform.python_version()}"
    )
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    before = bench_in_process(args.model, photos, sizes, args.max_seconds / 2)
    batched, unbatched = bench_services(
        args.model,
        photos,
        levels,
        args.requests,
        args.max_seconds,
        args.rounds,
        args.service_batch,
        args.log_dir,
    )
    after = bench_in_process(args.model, photos, sizes, args.max_seconds / 2)
    inproc = [
        max(pair, key=lambda r: r["images_per_s"]) for pair in zip(before, after, strict=True)
    ]
    limit = max(r["images_per_s"] for r in inproc)
    best_b = max(r["images_per_s"] for r in batched)
    best_u = max(r["images_per_s"] for r in unbatched)
    print(table("in-process (batch latency)", inproc, "batch"))
    print()
    title = f"service, batching on (max batch {args.service_batch}, max delay 5 ms)"
    print(table(title, batched, "concurrency"))
    print()
    print(table("service, batching off (max batch 1)", unbatched, "concurrency"))
    print()
    print(
        f"in-process limit {limit:.1f} images/s; service batched best {best_b:.1f} "
        f"({best_b / limit:.0%} of the limit); unbatched best {best_u:.1f} "
        f"({best_u / limit:.0%}); batching gain x{best_b / best_u:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
