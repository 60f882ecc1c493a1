"""Side-by-side benchmark of the dispatcher and its peers; writes docs/benchmarks.md.

    make bench            (= .venv/bin/python benchmarks/run.py)

One run, one PostgreSQL (DATABASE_URL, or the embedded one), a scratch
database `picloud_bench`, noop work everywhere:
  1. raw SQL floor   — bare psycopg loops claiming 100-row batches and deleting them
  2. PiCloud         — our dispatcher under `manage.py qcluster`
  3. django-q2       — the same work as async_task() calls on its ORM broker
  4. procrastinate   — its Django integration and worker
Throughput (rows/s) and enqueue-to-start latency (p50/p99 over sequential
single rows), the dispatcher's memory while draining, and a profile.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import platform
import pstats
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.probe import Receiver  # noqa: E402
from picloud.db.pgconn import database_url  # noqa: E402

BENCH_DB = "picloud_bench"
REPORT = PROJECT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- dispatcher-benchmark:begin -->", "<!-- dispatcher-benchmark:end -->"


def admin_settings() -> dict:
    if "DATABASE_URL" in os.environ:
        import environ

        return environ.Env().db_url("DATABASE_URL")
    from picloud.db.embedded import ensure_running

    return ensure_running()


def scratch_database(name: str) -> tuple[dict, str]:
    """Drop and create database `name` on the benchmarks' server: (the
    server's admin settings, the new database's conninfo)."""
    admin = admin_settings()
    with psycopg.connect(conninfo(admin, admin["NAME"]), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {name}")
    return admin, conninfo(admin, name)


def start_django(env: dict, *, only: bool = False) -> None:
    """Set Django up in this process with `env` added to the environment (or,
    `only`, as the whole environment) and migrate its database."""
    if only:
        os.environ.clear()
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "picloud.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def conninfo(settings: dict, dbname: str) -> str:
    params = {"dbname": dbname, "user": settings.get("USER") or None}
    for key, name in (("HOST", "host"), ("PORT", "port"), ("PASSWORD", "password")):
        if settings.get(key):
            params[name] = str(settings[key])
    for key, value in (settings.get("OPTIONS") or {}).items():
        params[key] = value
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v})


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class InlineExecutor:
    """Runs each row in the calling thread, so cProfile (which follows one
    thread) sees the per-row work: production hands the batch to a handler
    thread instead (RowExecutor). One Lookups for the whole run: the
    per-batch context query is not what the profile studies."""

    def __init__(self) -> None:
        # Imported here: the benchmark sets Django up before touching models.
        from picloud.runtime.execution import Lookups, RowExecutor, execute_row

        self.execute_row = execute_row
        self.limits = RowExecutor()  # ceilings read once, as production's executor does
        self.lookups = Lookups()

    def run_batch(self, rows):
        return _InlineRun(self, rows)

    def saturated(self) -> bool:
        return False


class _InlineRun:
    def __init__(self, executor: InlineExecutor, rows) -> None:
        self.executor, self.rows = executor, iter(rows)

    def __iter__(self):
        return self

    def __next__(self):
        limits = self.executor.limits
        return self.executor.execute_row(
            next(self.rows),
            ceiling=limits.ceiling,
            webhook_config=limits.webhook_config,
            lookups=self.executor.lookups,
            in_sandbox=True,
        )

    def cancel(self) -> None:
        self.rows = iter(())

    def close(self) -> None:
        self.rows = iter(())


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.receiver = Receiver()
        admin, self.conninfo = scratch_database(BENCH_DB)
        try:
            import procrastinate  # noqa: F401

            self.has_procrastinate = True
        except ImportError:
            self.has_procrastinate = False
        extra_apps = (
            "procrastinate.contrib.django,benchmarks" if self.has_procrastinate else "benchmarks"
        )
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(admin, BENCH_DB),
            "PICLOUD_EXTRA_APPS": extra_apps,
            "PICLOUD_BENCH_PROBE": self.receiver.address,
            "PICLOUD_LOG_LEVEL": "WARNING",
            # As in production: DEBUG makes Django record every query.
            "DJANGO_DEBUG": "false",
            "PICLOUD_DATABASE_ANNOUNCED": "1",
            "PICLOUD_QCLUSTER_WORKERS": str(args.processes),
        }
        start_django(self.env)
        self.seed()

    def seed(self) -> None:
        from django.contrib.auth import get_user_model

        from picloud.models import App, AppMembership, Script, principal_for

        user = get_user_model().objects.create_user("bench", password=None, is_staff=True)
        self.principal = principal_for(user)
        # The throughput rounds spread their rows over `--apps` tenants, each
        # capped at PICLOUD_APP_MAX_CONCURRENCY in flight as in production.
        self.apps, self.scripts = [], []
        for i in range(self.args.apps):
            app = App.objects.create(slug=f"bench-{i}", name=f"Bench {i}")
            AppMembership.objects.create(app=app, principal=self.principal, role="admin")
            self.apps.append(app)
            self.scripts.append(Script.objects.create(app=app, name="noop", handler="bench.noop"))
        self.app, self.script = self.apps[0], self.scripts[0]

    # -- helpers -------------------------------------------------------------

    def sql(self, statement: str, params=None):
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            cur = c.execute(statement, params)
            return cur.fetchall() if cur.description else None

    def bulk_insert(self, n: int, table: str = "outbox", *, apps: int | None = None) -> float:
        """Insert n outbox rows in one transaction, spread over the first
        `apps` tenants (all of them by default); returns the commit time."""
        k = apps or len(self.apps)
        with psycopg.connect(self.conninfo) as c:
            c.execute(
                f"INSERT INTO {table} (app_id, source_kind, script_id, run_as_principal, payload) "
                "SELECT (%(apps)s::uuid[])[1 + g %% %(k)s], 'kv', (%(scripts)s::uuid[])[1 + g %% %(k)s], "
                "%(principal)s, jsonb_build_object('n', g) FROM generate_series(1, %(n)s) g",
                {
                    "apps": [a.id for a in self.apps[:k]],
                    "scripts": [s.id for s in self.scripts[:k]],
                    "k": k,
                    "principal": self.principal.id,
                    "n": n,
                },
            )
            c.commit()
            return time.time()

    def outbox_count(self) -> int:
        return self.sql("SELECT count(*) FROM outbox")[0][0]

    def wait_for_tag(self, tag: str, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = self.receiver.receive(timeout=max(0.01, deadline - time.monotonic()))
            if hit and hit[0] == tag:
                return hit[1]
        raise TimeoutError(f"no handler start for {tag} within {timeout}s")

    def flush_probes(self) -> None:
        while self.receiver.receive(timeout=0.3):
            pass

    def start(self, argv: list[str], log: Path, **env) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "manage.py", *argv],
            cwd=PROJECT,
            env={**self.env, **env},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @staticmethod
    def stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def latency(self, enqueue, n: int) -> dict:
        """Sequential single rows: enqueue (returns after its commit), wait for the start."""
        self.flush_probes()
        samples = []
        for i in range(n):
            tag = f"L{i}"
            committed = enqueue(tag)
            samples.append((self.wait_for_tag(tag) - committed) * 1000)
        return {
            "n": n,
            "p50": statistics.median(samples),
            "p99": percentile(samples, 99),
        }

    # -- contenders ----------------------------------------------------------

    def raw_floor_round(self) -> float:
        """Rows/s of bare claim-and-delete loops over `outbox_floor`."""
        n = self.args.rows
        self.sql("CREATE TABLE IF NOT EXISTS outbox_floor (LIKE outbox INCLUDING ALL)")
        self.sql("VACUUM ANALYZE outbox_floor")
        self.bulk_insert(n, table="outbox_floor")
        procs = [
            subprocess.Popen(
                [sys.executable, str(PROJECT / "benchmarks" / "raw_floor.py"), self.conninfo],
                stdin=subprocess.PIPE,
                text=True,
            )
            for _ in range(self.args.processes)
        ]
        time.sleep(1.0)  # let them connect; not timed
        started = time.time()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            p.wait()
        elapsed = time.time() - started
        assert self.sql("SELECT count(*) FROM outbox_floor")[0][0] == 0
        return n / elapsed

    def start_cluster(self, log: Path, **env) -> subprocess.Popen:
        """A qcluster, once every worker listens for rows."""
        proc = self.start(["qcluster"], log, PICLOUD_LOG_LEVEL="INFO", **env)
        deadline = time.monotonic() + 60
        while log.read_text().count("listening for outbox rows") < self.args.processes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"qcluster did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        return proc

    def throughput_rounds(self, tmp: Path) -> tuple[dict, dict]:
        """Alternate the raw floor and the dispatcher, round by round, so both
        see the same minutes of this noisy machine; then measure latency.
        Each round also drains the rows once with the delivery log off (a
        cluster of its own: the setting is per process), to show what
        logging every attempt costs."""
        log = tmp / "picloud-qcluster.log"
        proc = self.start_cluster(log)
        running = [psutil.Process(proc.pid)]  # the cluster whose memory is sampled
        samples: dict[int, list[float]] = {}
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.wait(0.25):
                cluster = running[0]
                with contextlib.suppress(psutil.NoSuchProcess):
                    for p in [cluster, *cluster.children(recursive=True)]:
                        with contextlib.suppress(psutil.NoSuchProcess):
                            samples.setdefault(p.pid, []).append(p.memory_info().rss / 2**20)

        raw_rates, our_rates, one_app_rates, log_off_rates = [], [], [], []
        try:
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            for r in range(self.args.rounds):
                raw_rates.append(self.raw_floor_round())
                our_rates.append(self.drain_round())
                # One tenant alone: its app cap (half a default cluster's
                # slots) and its claims, which take turns, bound it.
                one_app_rates.append(self.drain_round(apps=1))
                self.stop(proc)
                off = self.start_cluster(tmp / "picloud-log-off.log", PICLOUD_DELIVERY_LOG="off")
                try:
                    log_off_rates.append(self.drain_round())
                finally:
                    self.stop(off)
                proc = self.start_cluster(log)
                running[0] = psutil.Process(proc.pid)
                print(
                    f"round {r + 1}: raw {raw_rates[-1]:,.0f}/s, picloud {our_rates[-1]:,.0f}/s, "
                    f"one app {one_app_rates[-1]:,.0f}/s, log off {log_off_rates[-1]:,.0f}/s",
                    flush=True,
                )
            stop_sampling.set()
            sampler.join()

            conn = psycopg.connect(self.conninfo, autocommit=True)

            def enqueue(tag: str) -> float:
                # One open connection, as an event source keeps one.
                conn.execute(
                    "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
                    "VALUES (%s, 'kv', %s, %s, jsonb_build_object('n', %s::text, 'probe', true))",
                    [self.app.id, self.script.id, self.principal.id, tag],
                )
                return time.time()

            latency = self.latency(enqueue, self.args.latency_rows)
            conn.close()
        finally:
            self.stop(proc)
        memory = {
            pid: {"peak": max(v), "after_warmup": v[max(0, len(v) // 10)], "end": v[-1]}
            for pid, v in samples.items()
            if v
        }
        raw = {"n": self.args.rows, "rate": statistics.median(raw_rates), "rounds": raw_rates}
        ours = {
            "n": self.args.rows,
            "rate": statistics.median(our_rates),
            "rounds": our_rates,
            "ratios": [o / r for o, r in zip(our_rates, raw_rates, strict=True)],
            "latency": latency,
            "memory": memory,
            "one_app": {
                "rate": statistics.median(one_app_rates),
                "rounds": one_app_rates,
                "ratios": [o / r for o, r in zip(one_app_rates, raw_rates, strict=True)],
            },
            "log_off": {
                "rate": statistics.median(log_off_rates),
                "rounds": log_off_rates,
                "ratios": [o / r for o, r in zip(log_off_rates, raw_rates, strict=True)],
            },
        }
        return raw, ours

    def drain_round(self, apps: int | None = None) -> float:
        """Rows/s of the running cluster draining a fresh batch of rows."""
        # Same start as the floor's table: no dead tuples from earlier rounds.
        self.sql("VACUUM ANALYZE outbox")
        committed = self.bulk_insert(self.args.rows, apps=apps)
        while self.outbox_count():
            time.sleep(0.02)
        return self.args.rows / (time.time() - committed)

    def django_q2(self, tmp: Path) -> dict:
        from django_q.tasks import async_task

        n = self.args.peer_rows
        for i in range(n):
            async_task("benchmarks.tasks.django_q_noop", i)
        self.flush_probes()
        proc = self.start(["qcluster"], tmp / "django-q2.log", PICLOUD_DISPATCHER_ENABLED="false")
        try:
            hits = self.receiver.drain(n, timeout=30)
            rate = (len(hits) - 1) / (hits[-1][1] - hits[0][1]) if len(hits) > 1 else 0.0

            def enqueue(tag: str) -> float:
                async_task("benchmarks.tasks.django_q_noop", tag)
                return time.time()

            latency = self.latency(enqueue, self.args.latency_rows)
            return {"n": len(hits), "rate": rate, "latency": latency}
        finally:
            self.stop(proc)

    def procrastinate(self, tmp: Path) -> dict:
        from benchmarks.tasks import procrastinate_noop

        n = self.args.peer_rows
        procrastinate_noop.batch_defer(*[{"n": i} for i in range(n)])
        self.flush_probes()
        argv = [
            "procrastinate",
            "worker",
            f"--concurrency={self.args.concurrency}",
            "--delete-jobs=successful",
        ]
        procs = [
            self.start(argv, tmp / f"procrastinate-{i}.log") for i in range(self.args.processes)
        ]
        try:
            hits = self.receiver.drain(n, timeout=30)
            rate = (len(hits) - 1) / (hits[-1][1] - hits[0][1]) if len(hits) > 1 else 0.0

            def enqueue(tag: str) -> float:
                procrastinate_noop.defer(n=tag)
                return time.time()

            latency = self.latency(enqueue, self.args.latency_rows)
            return {"n": len(hits), "rate": rate, "latency": latency}
        finally:
            for p in procs:
                self.stop(p)

    def profile(self) -> str:
        """cProfile the claim-and-settle path in this process, draining noop rows.

        The engine spreads a row's work over its event loop, its database
        thread and a handler thread, which cProfile (one thread) cannot follow
        together; this drives the same claim, checks and settling through the
        synchronous drain (Dispatcher.run_once) with each row run inline, so
        the profile covers that per-row work but not the hand-offs.
        """
        from django.db import connection, transaction

        from deadletters.pg_repository import PgAbandonedRepo, PgDeadLetterRepo
        from outbox.dispatch.dispatcher import Dispatcher
        from outbox.dispatch.metrics import Counters
        from outbox.dispatch.replies import InboxReplySink
        from outbox.dispatch.worker import prepare_connection
        from outbox.storage.pg_repository import PgOutboxRepo, PgReplyInbox
        from triggers.pg_repository import PgTriggerRepo

        os.environ.pop("PICLOUD_BENCH_PROBE", None)
        # A connection set up as a dispatch loop's is (synchronous_commit off,
        # as in production).
        connection.close()
        connection.ensure_connection()
        prepare_connection()
        n = self.args.profile_rows
        self.sql("VACUUM ANALYZE outbox")
        self.bulk_insert(n)
        dispatcher = Dispatcher(
            outbox=PgOutboxRepo(),
            triggers=PgTriggerRepo(),
            dead_letters=PgDeadLetterRepo(),
            replies=InboxReplySink(PgReplyInbox(), PgAbandonedRepo(), Counters()),
            atomic=transaction.atomic,
            executor=InlineExecutor(),
        )
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        while dispatcher.run_once(100).claimed:
            pass
        dispatcher.flush_acks()
        profiler.disable()
        elapsed = time.perf_counter() - started
        stats = pstats.Stats(profiler).strip_dirs()
        cumulative = {(f, name): ct for (f, _, name), (_, _, _, ct, _) in stats.stats.items()}
        wanted = [
            ("dispatcher.py", "run_once", "the whole batch loop"),
            (
                "pg_repository.py",
                "claim_due",
                "claim + acknowledge (one statement a batch), rows parsed",
            ),
            (
                "pg_repository.py",
                "_record",
                "  turning claimed rows into records (JSON, timestamps)",
            ),
            ("execution.py", "execute_row", "executing rows (execute_row)"),
            ("execution.py", "_run_python", "  context and handler call"),
            ("execution.py", "_size", "  payload/result size checks"),
            ("dispatcher.py", "_settle", "settling outcomes"),
        ]
        total = cumulative.get(("dispatcher.py", "run_once"), elapsed)
        lines = [
            f"The claim-and-settle path (Dispatcher.run_once) in one process, handlers inline, "
            f"{n:,} noop rows in "
            f"{elapsed:.2f} s ({n / elapsed:,.0f} rows/s with the profiler on):",
            "",
            "| where | cumulative s | share |",
            "| --- | ---: | ---: |",
        ]
        for file, name, label in wanted:
            seconds = cumulative.get((file, name))
            if seconds is not None:
                lines.append(f"| {label} | {seconds:.2f} | {seconds / total:.0%} |")
        out = io.StringIO()
        stats.stream = out
        stats.sort_stats("tottime").print_stats(12)
        top = "\n".join(
            line.rstrip() for line in out.getvalue().splitlines() if re.search(r"\d+\.\d{3}", line)
        )
        return "\n".join(lines) + "\n\nTop functions by own time:\n\n```\n" + top + "\n```"


def _in_flight() -> int:
    from picloud.config import DispatcherConfig

    return DispatcherConfig.current().max_in_flight


def _app_cap() -> int:
    from picloud.config import ConcurrencyConfig

    return ConcurrencyConfig.current().app_max_concurrency


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = psutil.virtual_memory().total / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB RAM, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def render(bench: Bench, results: dict, profile: str, command: str) -> str:
    raw, ours = results["raw"], results["picloud"]
    pg_version = bench.sql("SHOW server_version")[0][0]
    lines = [
        BEGIN,
        "## Dispatcher: throughput, latency, memory",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- PostgreSQL {pg_version}; {bench.args.processes} worker processes for every contender "
        f"(qcluster workers / raw loops / procrastinate workers), "
        f"PiCloud on its defaults ({_in_flight()} executions in flight per process), "
        f"procrastinate `--concurrency {bench.args.concurrency}` per worker.",
        "",
        "| contender | throughput (rows/s) | rows | vs raw floor | latency p50 (ms) | latency p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("raw", "raw SQL floor (claim 100 + delete)"),
        ("picloud", "**PiCloud dispatcher** under qcluster"),
        ("django_q2", "django-q2 async_task, ORM broker"),
        ("procrastinate", "procrastinate (Django integration)"),
    ):
        r = results.get(key)
        if not r:
            continue
        lat = r.get("latency")
        lat_cols = f"{lat['p50']:.1f} | {lat['p99']:.1f}" if lat else "n/a | n/a"
        lines.append(
            f"| {label} | {r['rate']:,.0f} | {r['n']:,} | {r['rate'] / raw['rate']:.0%} | {lat_cols} |"
        )
        if key == "picloud":
            one = r["one_app"]
            lines.append(
                f"| PiCloud, the same rows in one app | {one['rate']:,.0f} | {r['n']:,} | "
                f"{one['rate'] / raw['rate']:.0%} | n/a | n/a |"
            )
            off = r["log_off"]
            lines.append(
                f"| PiCloud with the delivery log off | {off['rate']:,.0f} | {r['n']:,} | "
                f"{off['rate'] / raw['rate']:.0%} | n/a | n/a |"
            )
    lines.append("")
    ratios = ", ".join(f"{r:.0%}" for r in ours["ratios"])
    checks = [
        f"throughput {statistics.median(ours['ratios']):.0%} of the raw floor, median of the "
        f"per-round ratios ({ratios}) (target ≥ 50 %); rows in one app: "
        f"{statistics.median(ours['one_app']['ratios']):.0%}",
        f"with the delivery log on (every attempt logged, as above) "
        f"{statistics.median(ours['ratios']):.0%} of the raw floor (target ≥ 45 %), against "
        f"{statistics.median(ours['log_off']['ratios']):.0%} with it off "
        f"(per round: {', '.join(f'{r:.0%}' for r in ours['log_off']['ratios'])}); "
        f"the log keeps {statistics.median(ours['ratios']) / statistics.median(ours['log_off']['ratios']):.0%} "
        "of the log-off throughput",
    ]
    if "procrastinate" in results:
        pc = results["procrastinate"]
        checks.append(
            f"{ours['rate'] / pc['rate']:.0f} times procrastinate's throughput (target: at least 10)"
        )
        checks.append(
            f"latency p50 {ours['latency']['p50']:.1f} ms (target ≤ 3 ms; procrastinate "
            f"{pc['latency']['p50']:.1f}), p99 {ours['latency']['p99']:.1f} ms (procrastinate "
            f"{pc['latency']['p99']:.1f})"
        )
    lines += ["Targets, as ratios within this run:", ""] + [f"- {c}" for c in checks]
    lines += [
        "",
        f"Throughput: {bench.args.rounds} rounds, each the raw floor, then PiCloud draining "
        f"{ours['n']:,} rows spread over {bench.args.apps} apps, then the same number in one app, "
        "each inserted in one transaction (timed from its commit until the table "
        "is empty, acknowledgements included); medians shown. One app alone may have "
        f"{_app_cap()} rows in flight (PICLOUD_APP_MAX_CONCURRENCY, half the cluster's slots), "
        "and its claims take turns. Per round, raw: "
        + ", ".join(f"{r:,.0f}" for r in raw["rounds"])
        + "; PiCloud: "
        + ", ".join(f"{r:,.0f}" for r in ours["rounds"])
        + "; one app: "
        + ", ".join(f"{r:,.0f}" for r in ours["one_app"]["rounds"])
        + "; log off (a cluster started with PICLOUD_DELIVERY_LOG=off, after the others): "
        + ", ".join(f"{r:,.0f}" for r in ours["log_off"]["rounds"])
        + " rows/s. The peers run rows already enqueued, timed from the first handler start to "
        f"the last over {results.get('django_q2', {}).get('n', 0):,} rows (too slow for "
        f"{ours['n']:,} in a bench run). Latency: sequential single rows, from the enqueuing "
        "commit to the handler's first line, reported over UDP on loopback.",
        "",
        f"### Memory while draining {bench.args.rounds} rounds of {ours['n']:,} rows",
        "",
        "RSS of every qcluster process (MiB):",
        "",
        "| pid | after warm-up | end | peak |",
        "| --- | ---: | ---: | ---: |",
    ]
    for pid, m in sorted(ours["memory"].items()):
        lines.append(f"| {pid} | {m['after_warmup']:.0f} | {m['end']:.0f} | {m['peak']:.0f} |")
    lines += ["", "### Profile", "", profile, "", END]
    return "\n".join(lines)


def write_report(section: str, begin: str = BEGIN, end_marker: str = END) -> None:
    """Replace the section between `begin` and `end_marker` (or append it)."""
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    if begin in text:
        start, end = text.index(begin), text.index(end_marker) + len(end_marker)
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    REPORT.write_text(text)


def section_main(parser: argparse.ArgumentParser, make_target: str, run, render, begin, end):
    """The main of a benchmark that writes one section of docs/benchmarks.md:
    parse the arguments (adding --no-write), run(args) -> (setup, results),
    render(setup, results, command) -> the section, print it and write it.
    The command quoted is the make target, or the script with its arguments."""
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    args = parser.parse_args()
    script = f"python benchmarks/{Path(sys.argv[0]).name}"
    command = f"make {make_target}" if len(sys.argv) == 1 else " ".join([script, *sys.argv[1:]])
    setup, results = run(args)
    section = render(setup, results, command)
    print(section)
    if not args.no_write:
        write_report(section, begin, end)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per throughput round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    parser.add_argument("--peer-rows", type=int, default=2_000, help="django-q2/procrastinate rows")
    parser.add_argument("--latency-rows", type=int, default=500)
    parser.add_argument("--profile-rows", type=int, default=20_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--apps", type=int, default=4, help="tenants the throughput rounds' rows are spread over"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=100,
        help="procrastinate's concurrency per worker (PiCloud's in flight per process is 100)",
    )
    parser.add_argument("--skip-peers", action="store_true", help="only the floor and PiCloud")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    args = parser.parse_args()
    command = (
        "make bench" if len(sys.argv) == 1 else "python benchmarks/run.py " + " ".join(sys.argv[1:])
    )
    bench = Bench(args)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "picloud-bench"
    tmp.mkdir(exist_ok=True)
    results = {}
    print("raw floor and picloud...", flush=True)
    results["raw"], results["picloud"] = bench.throughput_rounds(tmp)
    print({k: v for k, v in results["picloud"].items() if k != "memory"}, flush=True)
    if not args.skip_peers:
        print("procrastinate...", flush=True)
        if bench.has_procrastinate:
            results["procrastinate"] = bench.procrastinate(tmp)
            print(results["procrastinate"], flush=True)
        print("django-q2...", flush=True)
        results["django_q2"] = bench.django_q2(tmp)
        print(results["django_q2"], flush=True)
    print("profile...", flush=True)
    profile = bench.profile()
    section = render(bench, results, profile, command)
    print(section)
    if not args.no_write:
        write_report(section)


if __name__ == "__main__":
    main()
