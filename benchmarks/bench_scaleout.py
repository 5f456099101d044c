"""Scale-out: does throughput add up when replicas are added behind a load balancer?

One run, on the same real JPEGs (``../shared/data/imagenet-sample-open.tar.gz``), one image per
request, loopback only, measures side by side:

- ``1 replica, direct``: one ``python -m service`` with ``--threads`` onnxruntime and decode
  threads, the client talking to it directly;
- ``1 replica via nginx``: the same replica behind nginx (the balancer's own cost);
- ``2 replicas via nginx``: two such replicas behind nginx (least_conn, keep-alive upstreams),

at one client concurrency per replica count (``--concurrency`` per replica), each run bounded by
``--requests`` and ``--max-seconds``, the best of ``--rounds`` (the set-ups alternate, which
damps drifting load from other processes). Client, nginx and replicas share the machine's CPUs,
so on a 2-core machine two 1-thread replicas cannot reach 2x: the ratio says how much of the
second core the second replica turns into images.

    .venv/bin/python benchmarks/bench_scaleout.py --rounds 3

The nginx configuration (:data:`NGINX_CONF`) is also what ``tests/test_scaleout.py`` runs.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_service import (  # noqa: E402
    PHOTOS,
    free_port,
    load_arguments,
    load_photos,
    percentiles,
    start_service,
)

# Retries: a request that cannot connect (a replica shutting down has closed its listener) goes
# to the other replica, and that replica is left out for fail_timeout. A POST that reached a
# replica is never retried (no non_idempotent): a replica's SIGTERM must answer what it took.
# A 503 (queue full) reaches the client with its Retry-After. nginx drops an idle pooled
# connection after 4 s, before the service does (OLTR_KEEPALIVE_TIMEOUT_S, 5 s): otherwise a
# request can go out on a connection the service is closing at that instant, and a sent POST is
# lost (502). On SIGTERM the service keeps idle connections open (service/http_limits.py).
NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$status $upstream_addr $upstream_status $request_time';
    access_log {work}/access.log upstreams;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    client_max_body_size 16m;
    upstream oltr {{
        least_conn;
{servers}
        keepalive 32;
        keepalive_timeout 4s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://oltr;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Request-ID $request_id;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """nginx from PATH or Debian's /usr/sbin (not on a normal user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


class Nginx:
    """nginx in the foreground on a free loopback port, balancing ``upstreams`` (host:port)."""

    def __init__(self, upstreams: list[str], work: Path) -> None:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx is not installed: scripts/install-system-deps.sh")
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        servers = "\n".join(f"        server {u} max_fails=1 fail_timeout=2s;" for u in upstreams)
        conf = work / "nginx.conf"
        # As root, nginx would run its workers as nobody, who cannot enter private temp dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf.write_text(NGINX_CONF.format(user=user, work=work, port=self.port, servers=servers))
        self._log = (work / "stderr.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_listening()

    def _wait_listening(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(self.work / 'error.log').read_text()}")
            try:
                httpx.get(self.url + "/healthz", timeout=2)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise TimeoutError("nginx did not listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Answer:
    status: int
    upstream: str
    """nginx's X-Upstream: the replica(s) tried, ``a, b`` when it retried on another one."""
    latency_s: float


@dataclass
class Load:
    """Answers in arrival order (readable from another thread while the load runs)."""

    answers: list[Answer] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return len(self.answers) / self.elapsed_s if self.elapsed_s else 0.0


async def drive(
    url: str,
    payloads: list[bytes],
    *,
    concurrency: int,
    requests: int,
    seconds: float,
    load: Load | None = None,
    path: str = "/classify",
) -> Load:
    """``concurrency`` clients POST one image per request (raw body) until ``requests`` or
    ``seconds``; a refused connection or a timeout is recorded as status 0, never raised."""
    load = load if load is not None else Load()
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            data = payloads[sent % len(payloads)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(path, content=data, headers={"Content-Type": "image/jpeg"})
                answer = Answer(r.status_code, r.headers.get("x-upstream", ""), 0.0)
            except httpx.HTTPError:
                answer = Answer(0, "", 0.0)
            answer.latency_s = time.perf_counter() - t0
            load.answers.append(answer)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        load.elapsed_s = time.perf_counter() - start
    return load


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (nginx's workers of its master)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    return found


@dataclass
class Setup:
    name: str
    url: str
    concurrency: int
    replica_pids: list[int]
    nginx_pid: int | None = None

    def cpu(self) -> tuple[float, float, float]:
        """(replicas, nginx, this client) CPU seconds so far."""
        replicas = sum(process_cpu_s(p) for p in self.replica_pids)
        nginx_pids = [self.nginx_pid, *children(self.nginx_pid)] if self.nginx_pid else []
        client = os.times()
        return replicas, sum(process_cpu_s(p) for p in nginx_pids), client.user + client.system


def measure(setup: Setup, photos: list[bytes], requests: int, seconds: float) -> dict:
    """One bounded run: throughput, latency and CPU milliseconds per image by process."""
    before = setup.cpu()
    load = asyncio.run(
        drive(setup.url, photos, concurrency=setup.concurrency, requests=requests, seconds=seconds)
    )
    used = [b - a for a, b in zip(before, setup.cpu(), strict=True)]
    n = max(1, len(load.answers))
    return {
        "setup": setup.name,
        "concurrency": setup.concurrency,
        "requests": len(load.answers),
        "failed": sum(a.status != 200 for a in load.answers),
        "images_per_s": load.images_per_s,
        **percentiles([a.latency_s for a in load.answers]),
        **{f"{who}_cpu_ms": 1000 * cpu / n for who, cpu in zip(CPU_PARTS, used, strict=True)},
    }


CPU_PARTS = ("replica", "nginx", "client")


def report(best: dict[str, dict]) -> None:
    print(
        "| set-up | clients | requests | failed | images/s | p50 ms | p95 ms | p99 ms "
        "| CPU ms/image: replicas | nginx | client |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in best.values():
        print(
            f"| {r['setup']} | {r['concurrency']} | {r['requests']} | {r['failed']} | "
            f"{r['images_per_s']:.1f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | "
            f"{r['replica_cpu_ms']:.2f} | {r['nginx_cpu_ms']:.2f} | {r['client_cpu_ms']:.2f} |"
        )
    one, two, direct = (best[name] for name in SETUP_NAMES[1:] + SETUP_NAMES[:1])
    print(
        f"\nthroughput, 2 replicas / 1 replica (both via nginx): "
        f"x{two['images_per_s'] / one['images_per_s']:.2f}; "
        f"1 replica via nginx / direct: x{one['images_per_s'] / direct['images_per_s']:.2f}"
        f"\nreplica CPU per image, 2 replicas / 1 replica: "
        f"x{two['replica_cpu_ms'] / one['replica_cpu_ms']:.2f} "
        f"(1.00: a second replica costs nothing extra per image); images per replica CPU "
        f"second: {1000 / one['replica_cpu_ms']:.0f} (1 replica), "
        f"{1000 / two['replica_cpu_ms']:.0f} (2 replicas)"
    )


SETUP_NAMES = ["1 replica, direct", "1 replica via nginx", "2 replicas via nginx"]


def main(argv: list[str] | None = None) -> int:
    parser = load_arguments(__doc__.split("\n\n")[0], requests=600)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime + decode threads")
    parser.add_argument("--concurrency", type=int, default=8, help="clients per replica")
    parser.add_argument("--work", type=Path, default=Path("/tmp/oltr-scaleout"))
    args = parser.parse_args(argv)
    if not PHOTOS.is_file():
        print(f"skipped: {PHOTOS} is absent (the benchmark needs real JPEGs)")
        return 0
    if nginx_binary() is None:
        print("error: nginx is not installed (scripts/install-system-deps.sh)", file=sys.stderr)
        return 2
    photos = load_photos(args.photos)
    threads = str(args.threads)
    env = {"OLTR_INTRA_OP_THREADS": threads, "OLTR_PREPROCESS_THREADS": threads}
    print(
        f"model {args.model} | {len(photos)} photos | {platform.processor() or platform.machine()}"
        f" | {os.cpu_count()} CPUs | {threads} thread(s) per replica | nginx, least_conn"
        f" | load average {os.getloadavg()[0]:.1f}"
    )
    args.work.mkdir(parents=True, exist_ok=True)
    replicas = [
        start_service(args.model, 8, args.work / f"replica-{i}.log", **env) for i in range(2)
    ]
    upstreams = [url.removeprefix("http://") for _, url in replicas]
    pids = [proc.pid for proc, _ in replicas]
    c = args.concurrency
    try:
        with (
            Nginx(upstreams[:1], args.work / "nginx-1") as one,
            Nginx(upstreams, args.work / "nginx-2") as two,
        ):
            setups = [
                Setup(SETUP_NAMES[0], replicas[0][1], c, pids[:1]),
                Setup(SETUP_NAMES[1], one.url, c, pids[:1], one.proc.pid),
                Setup(SETUP_NAMES[2], two.url, 2 * c, pids, two.proc.pid),
            ]
            for setup in setups:  # warm-up: client, nginx, both replicas
                measure(setup, photos, 40, 10)
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for setup in setups:
                    result = measure(setup, photos, args.requests, args.max_seconds)
                    if result["images_per_s"] > best.get(setup.name, {}).get("images_per_s", 0):
                        best[setup.name] = result
    finally:
        for proc, _ in replicas:
            proc.terminate()
            proc.wait(30)
    report(best)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
