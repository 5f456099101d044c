"""The service beside off-the-shelf servers, on the same ONNX file and photos, in one run.

The peers live in ``../shared/benchmarks/peers`` (their README says how to install them, in a
venv of their own): naive FastAPI, BentoML (adaptive batching, ``max_latency_ms`` 1000), PyTriton
(Triton's dynamic batcher) and the HTTP floor (``/null``: upload read, no decode, no model).
They are called where they are, with the peers' Python; nothing of theirs is copied here. Peers
decode without JPEG draft mode (``PEERS_DRAFT=0``), the same pixels as the service.

Each round starts every server afresh on free loopback ports, waits for one photo to be
answered, measures it with the peers' aiohttp load client (``../load.py``: closed loop, one
photo per request, multipart) at each concurrency, stops it, and ends with the in-process limit
(``inprocess_limit.py``: decode + onnxruntime, no HTTP, 2 decode threads). The client shares
the machine's CPUs with the server. Ratios (the service over the best peer, over the limit) are
taken within a round, so load from other processes on a shared machine hits both sides.

    .venv/bin/python benchmarks/bench_side_by_side.py --peers-python PEERS_VENV/bin/python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEERS = REPO.parent / "shared" / "benchmarks" / "peers"
PHOTOS_TAR = REPO.parent / "shared" / "data" / "imagenet-sample-open.tar.gz"
DEFAULT_MODEL = REPO / "models" / "default" / "model.onnx"
SERVERS = ("service", "naive", "bentoml", "pytriton", "floor")  # and "baseline" (--baseline)
LOAD_LINE = re.compile(
    r"concurrency\s+(\d+):\s+([\d.]+) img/s\s+ok/s\s+([\d.]+)\s+p50\s+([\d.]+) ms\s+"
    r"p95\s+([\d.]+) ms\s+p99\s+([\d.]+) ms\s+codes (.*)"
)
LIMIT_LINE = re.compile(r"in-process limit: ([\d.]+) img/s at batch (\d+)")


@dataclass
class Server:
    """How to start one server: argv, extra environment, the URL to load."""

    name: str
    commands: list[list[str]]
    url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = PEERS


def free_port(span: int = 1) -> int:
    """A loopback port p with p .. p + span - 1 free (Triton takes three in a row)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span < 65535 and all(_free(port + i) for i in range(1, span)):
            return port
    raise RuntimeError("no free loopback ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_for(
    name: str, peers_python: str, model: Path, service_python: str, baseline: Path | None = None
) -> Server:
    """The command lines of ``name`` on fresh ports (``baseline``: another checkout's service,
    run by the same Python)."""
    port = free_port()
    peer_bin = Path(peers_python).parent
    uvicorn = [peers_python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
    quiet = ["--log-level", "warning"]
    if name in ("service", "baseline"):
        env = {"OLTR_MODEL_PATH": str(model), "OLTR_PORT": str(port), "OLTR_LOG_LEVEL": "warning"}
        cwd = REPO if name == "service" else baseline
        return Server(name, [[service_python, "-m", "service"]], _url(port), env, cwd)
    if name in ("naive", "floor"):
        path = "/classify" if name == "naive" else "/null"
        return Server(name, [[*uvicorn, *quiet, "naive_fastapi:app"]], _url(port, path))
    if name == "bentoml":
        serve = [str(peer_bin / "bentoml"), "serve", "bentoml_service:Classifier"]
        command = [*serve, "--host", "127.0.0.1", "--port", str(port)]
        return Server(name, [command], _url(port), {"PEER_MAX_LATENCY_MS": "1000"})
    if name == "pytriton":
        triton = free_port(span=3)
        env = {"PEER_TRITON_PORT": str(triton), "LD_LIBRARY_PATH": _libdir(peers_python)}
        commands = [[peers_python, "pytriton_server.py"], [*uvicorn, *quiet, "pytriton_server:app"]]
        return Server(name, commands, _url(port), env)
    raise ValueError(f"unknown server {name!r}; choose from {SERVERS} or baseline")


def _url(port: int, path: str = "/classify") -> str:
    return f"http://127.0.0.1:{port}{path}"


def _libdir(python: str) -> str:
    """The directory of the peers' Python's own libpython (PyTriton's stub needs it)."""
    code = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip() or sysconfig.get_config_var("LIBDIR")


@contextlib.contextmanager
def running(server: Server, model: Path, photo: Path, log: Path) -> Iterator[bool]:
    """Start the server's processes; yield whether one photo was answered within 180 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLTR_")}
    env.update(PEER_MODEL=str(model), BENTOML_DO_NOT_TRACK="true", PEERS_DRAFT="0", **server.env)
    procs = []
    with log.open("ab") as out:
        for command in server.commands:
            procs.append(
                subprocess.Popen(
                    command,
                    cwd=server.cwd,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        try:
            yield _answers(server.url, photo, procs)
        finally:
            for proc in reversed(procs):
                _stop(proc)


def _answers(url: str, photo: Path, procs: list[subprocess.Popen]) -> bool:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        probe = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10"]
            + ["-F", f"file=@{photo};type=image/jpeg", url],
            capture_output=True,
            text=True,
        )
        if probe.stdout == "200":
            return True
        time.sleep(1)
    return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (PyTriton starts tritonserver under it), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def load(peers_python: str, url: str, photos: Path, levels: str, seconds: float) -> list[dict]:
    """Run ``../load.py`` and parse its lines: one dict per concurrency level."""
    command = [peers_python, str(PEERS.parent / "load.py"), url, str(photos)]
    command += ["--concurrency", levels, "--seconds", str(seconds)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    rows = []
    for match in LOAD_LINE.finditer(out.stdout):
        c, img_s, ok_s, p50, p95, p99, codes = match.groups()
        rows.append(
            {
                "concurrency": int(c),
                "img_per_s": float(img_s),
                "ok_per_s": float(ok_s),
                "p50_ms": float(p50),
                "p95_ms": float(p95),
                "p99_ms": float(p99),
                "codes": codes.strip(),
            }
        )
    if not rows:
        raise RuntimeError(f"load.py printed nothing usable:\n{out.stdout}\n{out.stderr}")
    return rows


def in_process_limit(peers_python: str, model: Path, photos: Path) -> float:
    command = [peers_python, "inprocess_limit.py", "--model", str(model), "--images", str(photos)]
    command += ["--seconds", "3", "--decode-threads", "2"]
    env = {**os.environ, "PEERS_DRAFT": "0"}
    out = subprocess.run(command, cwd=PEERS, capture_output=True, text=True, env=env, timeout=600)
    match = LIMIT_LINE.search(out.stdout)
    if match is None:
        raise RuntimeError(f"inprocess_limit.py printed no limit:\n{out.stdout}\n{out.stderr}")
    return float(match.group(1))


def extract_photos(n: int, into: Path) -> Path:
    """The first ``n`` JPEGs of the shared ImageNet sample, as files (what load.py reads)."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(PHOTOS_TAR, "r:gz") as tar:
        members = sorted(
            (m for m in tar if m.isfile() and m.name.lower().endswith((".jpeg", ".jpg"))),
            key=lambda m: m.name,
        )[:n]
        for member in members:
            (into / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    return into


def run_round(args: argparse.Namespace, photos: Path, log: Path) -> dict:
    """Every server once, then the in-process limit: {"servers": {name: rows}, "limit": x}."""
    first = sorted(photos.iterdir())[0]
    results: dict[str, list[dict] | str] = {}
    for name in args.servers:
        server = server_for(name, args.peers_python, args.model, sys.executable, args.baseline)
        with running(server, args.model, first, log) as ready:
            stamp = time.strftime("%H:%M:%S", time.gmtime())
            print(f"== {name} {stamp} UTC {'ready' if ready else 'FAILED to start'}", flush=True)
            if not ready:
                results[name] = "did not start (see the log)"
                continue
            results[name] = load(
                args.peers_python, server.url, photos, args.concurrency, args.seconds
            )
            for row in results[name]:
                print(f"   {row}", flush=True)
    limit = in_process_limit(args.peers_python, args.model, photos)
    print(f"== in-process limit {limit:.1f} img/s", flush=True)
    return {"servers": results, "limit": limit}


def ratios(round_: dict, concurrency: int) -> dict[str, float]:
    """ok/s of the service over the best peer and over the in-process limit, at one level."""

    def ok(name: str) -> float | None:
        rows = round_["servers"].get(name)
        if not isinstance(rows, list):
            return None
        return next((r["ok_per_s"] for r in rows if r["concurrency"] == concurrency), None)

    service = ok("service")
    peers = [v for n in ("naive", "bentoml", "pytriton") if (v := ok(n)) is not None]
    out = {}
    if service is not None and peers:
        out["service_over_best_peer"] = service / max(peers)
    if service is not None:
        out["service_over_limit"] = service / round_["limit"]
    return out


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_avg_at_start": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers-python", required=True, help="Python of the peers' venv")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--photos", type=int, default=100)
    ap.add_argument("--servers", type=lambda s: s.split(","), default=list(SERVERS))
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of this repository (e.g. before a change): its service runs "
        "too, as server 'baseline' (add it to --servers)",
    )
    args = ap.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed to probe the servers")
    work = Path(tempfile.mkdtemp(prefix="oltr-side-by-side-"))
    photos = extract_photos(args.photos, work / "photos")
    log = work / "servers.log"
    print(f"photos {photos}, server logs {log}, machine {machine()}", flush=True)
    rounds = [run_round(args, photos, log) for _ in range(args.rounds)]
    top = max(int(c) for c in args.concurrency.split(","))
    for i, round_ in enumerate(rounds, 1):
        print(f"round {i} at concurrency {top}: {ratios(round_, top)}")
    if args.json:
        doc = {"machine": machine(), "args": vars(args) | {"model": str(args.model)}}
        doc["rounds"] = rounds
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    shutil.rmtree(photos)


if __name__ == "__main__":
    main()
