"""Fairness across apps under one cluster; writes its section of docs/benchmarks.md.

    make bench-fairness     (= .venv/bin/python benchmarks/fairness.py)

One PostgreSQL (DATABASE_URL, or the embedded one), a scratch database
`picloud_bench_fair`, `manage.py qcluster` on the defaults (2 worker
processes x 100 executions in flight, app cap 100), webhooks to local
aiohttp sinks (benchmarks/sink.py) on loopback. Measured:
  1. B's start latency (enqueuing commit to the handler's first line,
     sequential single rows) with nothing else running: B's unloaded p50/p99;
  2. the same while app A has 100,000 due rows whose webhook answers after 2 s;
  3. the same while A drains 100,000 noop rows;
  4. app C's throughput of 100 ms webhooks alone, then while app A's webhook
     hangs (never answers before the sandbox timeout) with rows to spare:
     during A's first timeout, and after A's circuit breaker opened.
Targets (issue: multi-tenant delivery): B's p99 <= 250 ms and <= 2x its
unloaded p99; A's hang costs C <= 10 % of its throughput.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.probe import Receiver  # noqa: E402
from benchmarks.run import (  # noqa: E402
    machine,
    percentile,
    scratch_database,
    section_main,
    start_django,
)
from benchmarks.sink import Sink  # noqa: E402
from picloud.db.pgconn import database_url  # noqa: E402

BENCH_DB = "picloud_bench_fair"
BEGIN, END = "<!-- fairness-benchmark:begin -->", "<!-- fairness-benchmark:end -->"
HANG_TIMEOUT_MS = 10_000  # the sandbox timeout in this benchmark: a hang lasts this long


class Setup:
    def __init__(self, args) -> None:
        self.args = args
        self.receiver = Receiver()
        self.sinks = {"slow": Sink(2.0), "fast": Sink(0.1), "hang": Sink(3600.0)}
        admin, self.conninfo = scratch_database(BENCH_DB)
        with psycopg.connect(self.conninfo) as c:
            self.pg_version = c.execute("SHOW server_version").fetchone()[0]
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(admin, BENCH_DB),
            "PICLOUD_EXTRA_APPS": "benchmarks",
            "PICLOUD_BENCH_PROBE": self.receiver.address,
            "PICLOUD_LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "false",
            "PICLOUD_DATABASE_ANNOUNCED": "1",
            "PICLOUD_WEBHOOK_ALLOW_PRIVATE": "true",
            "PICLOUD_WEBHOOK_ALLOW_HTTP": "true",
            "PICLOUD_SANDBOX_TIMEOUT_MS": str(HANG_TIMEOUT_MS),
        }
        start_django(self.env)
        self.seed()

    def seed(self) -> None:
        from django.contrib.auth import get_user_model

        from picloud.models import App, AppMembership, Script, principal_for

        user = get_user_model().objects.create_user("bench", password=None, is_staff=True)
        self.principal = principal_for(user)
        self.apps, self.scripts = {}, {}
        for slug in ("a", "b", "c"):
            app = self.apps[slug] = App.objects.create(slug=slug, name=slug.upper())
            AppMembership.objects.create(app=app, principal=self.principal, role="admin")
        a, b, c = self.apps["a"], self.apps["b"], self.apps["c"]
        for name, app, kwargs in (
            ("a-slow", a, {"runtime": "webhook", "webhook_url": self.sinks["slow"].url}),
            ("a-hang", a, {"runtime": "webhook", "webhook_url": self.sinks["hang"].url}),
            ("a-noop", a, {"handler": "bench.noop"}),
            ("b-probe", b, {"handler": "bench.noop"}),
            ("c-fast", c, {"runtime": "webhook", "webhook_url": self.sinks["fast"].url}),
        ):
            self.scripts[name] = Script.objects.create(app=app, name=name, **kwargs)

    def bulk(self, script: str, n: int) -> float:
        """n rows of `script` in one transaction; the commit's time."""
        s = self.scripts[script]
        with psycopg.connect(self.conninfo) as c:
            c.execute(
                "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
                "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) FROM generate_series(1, %s) g",
                [s.app_id, s.id, self.principal.id, n],
            )
            c.commit()
        return time.time()

    def count(self, script: str) -> int:
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            return c.execute(
                "SELECT count(*) FROM outbox WHERE script_id = %s", [self.scripts[script].id]
            ).fetchone()[0]

    def clear(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            c.execute("DELETE FROM outbox")
            c.execute("DELETE FROM script_circuits")

    def b_latency(self, n: int) -> dict:
        """B's sequential single rows: from the commit to the handler's start (ms)."""
        s = self.scripts["b-probe"]
        while self.receiver.receive(timeout=0.2):
            pass
        samples = []
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            for i in range(n):
                tag = f"B{time.monotonic_ns()}-{i}"
                c.execute(
                    "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, "
                    "payload) VALUES (%s, 'kv', %s, %s, jsonb_build_object('probe', true, 'n', "
                    "%s::text))",
                    [s.app_id, s.id, self.principal.id, tag],
                )
                committed = time.time()
                samples.append((self.wait_for_tag(tag) - committed) * 1000)
                time.sleep(self.args.b_gap)
        return {
            "n": n,
            "p50": statistics.median(samples),
            "p99": percentile(samples, 99),
            "max": max(samples),
        }

    def wait_for_tag(self, tag: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = self.receiver.receive(timeout=max(0.01, deadline - time.monotonic()))
            if hit and hit[0] == tag:
                return hit[1]
        raise TimeoutError(f"B's row {tag} did not start within {timeout}s")

    def c_rate(self, n: int) -> float:
        """Deliveries/s of n of C's 100 ms webhooks, from the commit to the last answer."""
        sink = self.sinks["fast"]
        sink.reset()
        committed = self.bulk("c-fast", n)
        stats = sink.wait_for(n, timeout=600)
        return n / (stats["last_answer_at"] - committed)

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()


def start_cluster(setup: Setup, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=PROJECT,
        env=setup.env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc  # ready when B's first row runs (the warm-up below)


def stop_cluster(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def run(args) -> tuple[Setup, dict]:
    setup = Setup(args)
    results: dict = {}
    log = Path(tempfile.gettempdir()) / "picloud-bench-fairness.log"
    cluster = start_cluster(setup, log)
    try:
        setup.b_latency(5)  # warm-up: the cluster is up and every process connected
        print("B unloaded...", flush=True)
        results["unloaded"] = setup.b_latency(args.b_rows)
        print(results["unloaded"], flush=True)

        print("A: 100,000 rows to a 2 s endpoint...", flush=True)
        setup.bulk("a-slow", args.a_rows)
        slow = setup.sinks["slow"]
        wait_until(lambda: slow.stats()["in_flight"] >= 100, 60, "A's slow webhooks in flight")
        results["a_slow"] = setup.b_latency(args.b_rows)
        results["a_slow"]["a_in_flight"] = slow.stats()["in_flight"]
        print(results["a_slow"], flush=True)
        setup.clear()
        wait_until(lambda: slow.stats()["in_flight"] == 0, 60, "A's slow webhooks to end")

        print("A: 100,000 noop rows...", flush=True)
        setup.bulk("a-noop", args.a_rows)
        results["a_noop"] = setup.b_latency(args.b_rows)
        results["a_noop"]["a_left"] = setup.count("a-noop")
        print(results["a_noop"], flush=True)
        wait_until(lambda: setup.count("a-noop") == 0, 120, "A's noop rows drained")

        print("C alone...", flush=True)
        results["c_alone"] = setup.c_rate(args.c_rows)
        print("C while A hangs...", flush=True)
        hang = setup.sinks["hang"]
        setup.bulk("a-hang", args.a_hang_rows)
        wait_until(lambda: hang.stats()["in_flight"] >= 100, 60, "A's hanging webhooks in flight")
        results["c_during_hang"] = setup.c_rate(args.c_rows)
        results["hang_in_flight"] = hang.stats()["peak"]
        # A's first requests time out after the sandbox timeout; the failures
        # open A's circuit, and its rows stop being claimed.
        wait_until(lambda: _circuit_open(setup), HANG_TIMEOUT_MS / 1000 + 60, "A's circuit open")
        results["c_after_breaker"] = setup.c_rate(args.c_rows)
        print(results, flush=True)
    finally:
        stop_cluster(cluster)
        setup.close()
    return setup, results


def _circuit_open(setup: Setup) -> bool:
    with psycopg.connect(setup.conninfo, autocommit=True) as c:
        return bool(
            c.execute(
                "SELECT 1 FROM script_circuits WHERE script_id = %s AND open_until > NOW()",
                [setup.scripts["a-hang"].id],
            ).fetchone()
        )


def render(setup: Setup, results: dict, command: str) -> str:
    unloaded = results["unloaded"]
    lines = [
        BEGIN,
        "## Fairness across apps",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- PostgreSQL {setup.pg_version}; `qcluster` on the defaults (2 worker processes x 100 "
        "in flight, app cap 100); webhooks to aiohttp sinks on loopback; "
        f"`PICLOUD_SANDBOX_TIMEOUT_MS={HANG_TIMEOUT_MS}`.",
        "",
        "App B's start latency: its rows one at a time, from the enqueuing commit to the "
        f"handler's first line ({unloaded['n']} rows per case).",
        "",
        "| while | B p50 (ms) | B p99 (ms) | B max (ms) | p99 vs unloaded |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("unloaded", "nothing else runs"),
        ("a_slow", f"A has {setup.args.a_rows:,} due rows, webhook answering in 2 s"),
        ("a_noop", f"A drains {setup.args.a_rows:,} noop rows"),
    ):
        r = results[key]
        lines.append(
            f"| {label} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | "
            f"{r['p99'] / unloaded['p99']:.2f}x |"
        )
    alone = results["c_alone"]
    lines += [
        "",
        f"App C's 100 ms webhooks ({setup.args.c_rows:,} deliveries, from the commit to the "
        "last answer):",
        "",
        "| while | C deliveries/s | vs alone |",
        "| --- | ---: | ---: |",
        f"| alone | {alone:,.0f} | 100% |",
    ]
    for key, label in (
        ("c_during_hang", f"A's webhook hangs ({results['hang_in_flight']} of A's requests held)"),
        ("c_after_breaker", "A's webhook hangs, A's circuit open"),
    ):
        lines.append(f"| {label} | {results[key]:,.0f} | {results[key] / alone:.0%} |")
    lines += [
        "",
        "Targets: B's p99 <= 250 ms and <= 2x unloaded; C keeps >= 90 % of its throughput "
        "while A hangs.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a-rows", type=int, default=100_000)
    parser.add_argument("--a-hang-rows", type=int, default=2_000)
    parser.add_argument("--b-rows", type=int, default=50, help="B's rows per case")
    parser.add_argument("--b-gap", type=float, default=0.02, help="seconds between B's rows")
    parser.add_argument("--c-rows", type=int, default=3_000)
    section_main(parser, "bench-fairness", run, render, BEGIN, END)


if __name__ == "__main__":
    main()
