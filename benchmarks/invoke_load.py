"""Load test of synchronous invocation over HTTP; writes docs/benchmarks.md.

    make bench-invoke     (= .venv/bin/python benchmarks/invoke_load.py)

One PostgreSQL (DATABASE_URL, or the embedded one), a scratch database
`picloud_bench_invoke`, `manage.py qcluster` dispatching, and the API served
on loopback by gunicorn with threads (gthread), as `make run` serves it and
docs/api.md recommends for production. The cluster and the dispatcher run on
their defaults. Measured:
  1. round trip of a noop script at low load: sequential requests on one
     keep-alive connection, p50/p99;
  2. a burst of 200 concurrent requests to a script sleeping 0.2 s
     (`picloud.sleep`, an async handler), all started together: every status,
     the burst's wall time (target: within 1.0 s), and the most PostgreSQL
     connections the web process held at any moment (sampled from
     pg_stat_activity by application_name); then the same burst of noops,
     which shows what HTTP alone costs on this machine.
The burst is sent by an aiohttp client in a process of its own
(benchmarks/loadgen.py, `--client aiohttp`, the default) so that the client's
CPU does not compete inside this process; `--client threads` sends it from
Python threads here instead, one connection each, for comparison.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psycopg

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.run import (  # noqa: E402
    machine,
    percentile,
    scratch_database,
    start_django,
    write_report,
)
from picloud.db.pgconn import database_url  # noqa: E402
from tests.helpers import free_port  # noqa: E402

BENCH_DB = "picloud_bench_invoke"
WEB_APP_NAME = "picloud-web-bench"  # application_name of the web process's connections
# What each burst request runs: a script and its payload.
BURST = {"sleep": ("sleep", {"seconds": 0.2}), "noop": ("noop", {})}
BURST_TARGET = 1.0  # seconds the sleeping burst may take, all requests answered
# Settings a developer's shell may carry that would move PiCloud off its defaults.
NOT_DEFAULTS = (
    "PICLOUD_QCLUSTER_WORKERS",
    "PICLOUD_DISPATCHER_",
    "PICLOUD_SANDBOX_",
    "PICLOUD_SYNC_",
)
CLIENTS = {
    "aiohttp": "aiohttp in a process of its own (benchmarks/loadgen.py), one connection "
    "per request, connecting included",
    "threads": "one Python thread per request in the benchmark's process, one connection "
    "each, connecting included",
}
OUTBOX_LISTEN = "LISTEN picloud_outbox"  # what a ready dispatcher last ran on its listener
BEGIN, END = "<!-- invoke-benchmark:begin -->", "<!-- invoke-benchmark:end -->"


class Setup:
    def __init__(self, args) -> None:
        self.args = args
        admin, self.conninfo = scratch_database(BENCH_DB)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(NOT_DEFAULTS)},
            "DATABASE_URL": database_url(admin, BENCH_DB),
            "PICLOUD_LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "false",
            "PICLOUD_DATABASE_ANNOUNCED": "1",
        }
        start_django(self.env, only=True)
        from django.conf import settings

        from picloud.config import DispatcherConfig

        self.workers = settings.Q_CLUSTER["workers"]
        self.in_flight = DispatcherConfig.current().max_in_flight
        self.token = self.seed()

    def seed(self) -> str:
        from django.contrib.auth import get_user_model

        from picloud.domain import tokens
        from picloud.models import App, AppMembership, Script, principal_for

        user = get_user_model().objects.create_user("bench", password=None)
        app = App.objects.create(slug="bench", name="Bench")
        principal = principal_for(user)
        AppMembership.objects.create(app=app, principal=principal, role="developer")
        Script.objects.create(app=app, name="noop", handler="picloud.noop")
        Script.objects.create(app=app, name="sleep", handler="picloud.sleep")
        return tokens.create_token(principal, name="bench", scopes=["script:invoke"])[1]

    def web_connections(self) -> int:
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            return c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (WEB_APP_NAME,),
            ).fetchone()[0]

    def dispatchers_listening(self) -> int:
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            return c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND query = %s",
                (BENCH_DB, OUTBOX_LISTEN),
            ).fetchone()[0]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            cmd, cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Client:
    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def invoke(self, conn, script: str, payload: dict) -> tuple[int, float]:
        # Bytes, so http.client sends headers and body in one packet (a str
        # body goes in a second send and meets Nagle's delayed-ACK wait).
        body = json.dumps(payload).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        started = time.perf_counter()
        conn.request("POST", f"/api/apps/bench/scripts/{script}/invoke", body, headers)
        response = conn.getresponse()
        response.read()
        return response.status, (time.perf_counter() - started) * 1000


def up(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/admin/login/")
        return conn.getresponse().status == 200
    except OSError:
        return False


def round_trips(client: Client, n: int) -> list[float]:
    conn = client.connection()
    for _ in range(20):  # warm-up: connections, imports, the hub
        client.invoke(conn, "noop", {})
    times = []
    for _ in range(n):
        status, ms = client.invoke(conn, "noop", {})
        assert status == 200, f"noop answered {status}"
        times.append(ms)
    conn.close()
    return times


class ConnectionPeak:
    """The most PostgreSQL connections the web process held, sampled every 10 ms."""

    def __init__(self, setup: Setup) -> None:
        self.setup, self.peak = setup, setup.web_connections()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def __enter__(self) -> ConnectionPeak:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, self.setup.web_connections())
            time.sleep(0.01)


def burst(setup: Setup, client: Client, kind: str) -> dict:
    """`concurrent` requests released together, each on its own connection."""
    send = burst_aiohttp if setup.args.client == "aiohttp" else burst_threads
    with ConnectionPeak(setup) as connections:
        statuses, latencies, wall, cpu = send(client, kind, setup.args.concurrent)
    return {
        "kind": kind,
        "statuses": statuses,
        "wall": wall,
        "p50": percentile(latencies, 50),
        "max": max(latencies),
        "client_cpu": cpu,
        "peak_connections": connections.peak,
    }


def burst_aiohttp(client: Client, kind: str, n: int) -> tuple[Counter, list[float], float, float]:
    """The burst from benchmarks/loadgen.py, in a process of its own."""
    script, payload = BURST[kind]
    out = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "benchmarks" / "loadgen.py"),
            f"http://127.0.0.1:{client.port}/api/apps/bench/scripts/{script}/invoke",
            f"--requests={n}",
            f"--concurrency={n}",
            f"--header=Authorization: Bearer {client.token}",
            f"--body={json.dumps(payload)}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    statuses = Counter(
        {int(s) if s.isdigit() else s: count for s, count in result["statuses"].items()}
    )
    return statuses, result["latencies_ms"], result["wall"], result["cpu"]


def burst_threads(client: Client, kind: str, n: int) -> tuple[Counter, list[float], float, float]:
    """The burst from n threads of this process (the client's CPU competes here)."""
    barrier = threading.Barrier(n + 1)
    statuses: list[int | str] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def one() -> None:
        c = client.connection()
        barrier.wait()
        try:
            status, ms = client.invoke(c, *BURST[kind])
        except OSError as exc:
            status, ms = f"error {type(exc).__name__}", 0.0
        with lock:
            statuses.append(status)
            latencies.append(ms)
        c.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    cpu = time.process_time()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return Counter(statuses), latencies, time.perf_counter() - started, time.process_time() - cpu


def measure(setup: Setup, server: str, port: int) -> dict:
    client = Client(port, setup.token)
    times = round_trips(client, setup.args.sequential)
    # Untimed: the server starts its request threads on demand, and the first
    # burst would pay for starting them.
    warmup = burst(setup, client, "noop")
    print(f"warm-up burst of noops: {warmup['wall']:.2f} s", flush=True)
    result = {
        "server": server,
        "p50": percentile(times, 50),
        "p99": percentile(times, 99),
        "cold_noop": warmup,
        "bursts": [burst(setup, client, kind) for kind in ("sleep", "noop")],
    }
    print(f"{server}: {result}", flush=True)
    return result


def run(args) -> list[dict]:
    setup = Setup(args)
    tmp = Path(tempfile.mkdtemp(prefix="picloud-invoke-bench-"))
    cluster = start([sys.executable, "manage.py", "qcluster"], setup.env, tmp / "qcluster.log")
    results = []
    try:
        wait_until(
            lambda: setup.dispatchers_listening() >= setup.workers, "the cluster's dispatchers"
        )
        port = free_port()
        web_env = {**setup.env, "PGAPPNAME": WEB_APP_NAME}
        servers = {
            "gunicorn, 1 process, gthread, 256 threads (as `make run`)": [
                sys.executable,
                "-m",
                "gunicorn",
                "picloud.wsgi:application",
                "--worker-class",
                "gthread",
                "--workers",
                "1",
                "--threads",
                "256",
                "--bind",
                f"127.0.0.1:{port}",
            ],
        }
        for name, cmd in servers.items():
            web = start(cmd, web_env, tmp / "web.log")
            try:
                wait_until(lambda: up(port), f"{name} to serve")
                results.append(measure(setup, name, port))
            finally:
                stop(web)
    finally:
        stop(cluster)
    setup.pg_version = psycopg.connect(setup.conninfo).execute("SHOW server_version").fetchone()[0]
    return setup, results


def meets_target(b: dict) -> bool:
    return set(b["statuses"]) == {200} and b["wall"] <= BURST_TARGET


def render(setup: Setup, results: list[dict], command: str) -> str:
    args = setup.args
    lines = [
        BEGIN,
        "## Synchronous invocation over HTTP",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- PostgreSQL {setup.pg_version}; `qcluster` on its defaults, {setup.workers} worker "
        f"processes x {setup.in_flight} executions in flight; the web server on loopback; "
        "client, web server, cluster and PostgreSQL share the machine's cores.",
        f"- Burst client: {CLIENTS[args.client]}.",
        "",
    ]
    for r in results:
        lines += [
            f"Server: {r['server']}.",
            "",
            f"- Noop round trip at low load: p50 **{r['p50']:.1f} ms**, p99 **{r['p99']:.1f} ms** "
            f"({args.sequential} sequential requests).",
            "",
            f"| burst of {args.concurrent} concurrent requests | statuses | wall time (s) | "
            "request p50 / max (ms) | client CPU (s) | web process's PostgreSQL connections, "
            "peak |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for b in r["bursts"]:
            statuses = ", ".join(
                f"{count} x {status}" for status, count in sorted(b["statuses"].items(), key=str)
            )
            seconds = BURST[b["kind"]][1].get("seconds")
            what = f"handler sleeping {seconds} s" if seconds else "noop handler"
            lines.append(
                f"| {what} | {statuses} | {b['wall']:.2f} | {b['p50']:.0f} / {b['max']:.0f} | "
                f"{b['client_cpu']:.2f} | {b['peak_connections']} |"
            )
        sleeping = next(b for b in r["bursts"] if b["kind"] == "sleep")
        cold = r["cold_noop"]
        lines += [
            "",
            f"- The untimed first burst of noops, while the server started its threads: "
            f"{cold['wall']:.2f} s wall ({sum(cold['statuses'].values())} requests, "
            f"{cold['statuses'].get(200, 0)} x 200).",
            f"- Target: all {args.concurrent} sleeping calls answered 200 within "
            f"{BURST_TARGET:.1f} s wall: **{sleeping['wall']:.2f} s**, "
            + ("met." if meets_target(sleeping) else "not met."),
            "",
        ]
    lines += [
        "Round trip: sequential requests on one keep-alive connection after 20 warm-up "
        "requests, from sending the request to reading the whole response (token check, "
        "enqueue, dispatch, reply, inbox settled). Bursts: after one untimed burst of noops "
        "(the server starts its threads on demand), all requests released together, "
        "each on its own connection; the web process's connections counted every 10 ms from "
        "pg_stat_activity (by its application_name). The bound is `PICLOUD_SYNC_DB_CONNECTIONS` "
        "(default 4) plus the one listening connection, whatever the number of waiting "
        "requests. The noop burst is there for comparison: it shows what HTTP, the client's "
        "and the server's threads cost on their own on this machine, so the part of the "
        "sleeping burst's wall time that the sleeps add is the difference of the two.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=500, help="noop round trips")
    parser.add_argument("--concurrent", type=int, default=200, help="requests in the burst")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="aiohttp", help="burst client")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    args = parser.parse_args()
    setup, results = run(args)
    command = "python benchmarks/invoke_load.py" + "".join(f" {a}" for a in sys.argv[1:])
    section = render(setup, results, command if len(sys.argv) > 1 else "make bench-invoke")
    print(section)
    if not args.no_write:
        write_report(section, BEGIN, END)
    failed = [b["statuses"] for r in results for b in r["bursts"] if set(b["statuses"]) != {200}]
    if failed:
        raise SystemExit(f"not every burst request succeeded: {failed}")


if __name__ == "__main__":
    main()
