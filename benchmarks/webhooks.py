"""Webhooks to a 100 ms endpoint: PiCloud beside procrastinate; writes docs/benchmarks.md.

    .venv/bin/python benchmarks/webhooks.py [--deliveries 5000] [--rounds 3] [--no-write]

One PostgreSQL (DATABASE_URL, or the embedded one), a scratch database
`picloud_bench_webhooks`, and a sink (benchmarks/sink.py: aiohttp in a
process of its own on loopback, answering 200 after 100 ms).
  0. the sink alone: an aiohttp client (benchmarks/loadgen.py, its own
     process) keeping 200 requests in flight, to show it is not the limit;
  1. PiCloud: `manage.py qcluster` on the defaults (worker processes, in
     flight per process), a webhook script and a KV trigger on it; each round
     writes `--deliveries` KV entries in one transaction through picloud.kv,
     so the fan-out to outbox rows is the production path;
  2. procrastinate: its Django integration, `--processes` workers with
     `--concurrency` each (the same total slots as PiCloud), an async task
     doing the same signed aiohttp POST of the same event
     (benchmarks/tasks.py), `--deliveries` jobs deferred in one statement.
Rounds alternate between the two. Each is timed from the commit to the
sink's answer to the last distinct delivery; medians of the rounds are
reported with the peak of requests waiting at the sink, the Little's-law
bound (slots / 0.1 s), the RSS and PostgreSQL connections of each worker
process (sampled while the rounds run) and their CPU time per delivery.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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

from benchmarks.run import machine, scratch_database, start_django, write_report  # noqa: E402
from benchmarks.sink import Sink  # noqa: E402
from picloud.db.pgconn import database_url  # noqa: E402

BENCH_DB = "picloud_bench_webhooks"
BEGIN, END = "<!-- webhook-benchmark:begin -->", "<!-- webhook-benchmark:end -->"
ENDPOINT_LATENCY = 0.1  # seconds the sink waits before answering
SINK_ALONE_IN_FLIGHT = 200
WARMUP = 200  # untimed deliveries per contender: pools opened, code loaded
# Settings a developer's shell may carry that would move PiCloud off its defaults.
NOT_DEFAULTS = ("PICLOUD_QCLUSTER_WORKERS", "PICLOUD_DISPATCHER_", "PICLOUD_SANDBOX_")


class Setup:
    def __init__(self, args, sink: Sink) -> None:
        self.args = args
        admin, self.conninfo = scratch_database(BENCH_DB)
        self.pg_port = int(admin.get("PORT") or 5432)
        try:
            import procrastinate  # noqa: F401

            self.has_procrastinate = True
        except ImportError:
            self.has_procrastinate = False
        extra_apps = (
            "procrastinate.contrib.django,benchmarks" if self.has_procrastinate else "benchmarks"
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(NOT_DEFAULTS)},
            "DATABASE_URL": database_url(admin, BENCH_DB),
            "PICLOUD_EXTRA_APPS": extra_apps,
            "PICLOUD_LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "false",
            "PICLOUD_DATABASE_ANNOUNCED": "1",
            # The sink listens on loopback over plain HTTP.
            "PICLOUD_WEBHOOK_ALLOW_PRIVATE": "true",
            "PICLOUD_WEBHOOK_ALLOW_HTTP": "true",
        }
        start_django(self.env, only=True)
        from django.conf import settings

        from picloud.config import DispatcherConfig

        self.workers = settings.Q_CLUSTER["workers"]
        self.in_flight = DispatcherConfig.current().max_in_flight
        self.seed(sink.url)

    def seed(self, url: str) -> None:
        from django.contrib.auth import get_user_model

        from picloud.models import App, AppMembership, Script, principal_for
        from triggers.pg_repository import PgTriggerRepo
        from triggers.repository import KvSpec, NewTrigger

        user = get_user_model().objects.create_user("bench", password=None)
        self.principal = principal_for(user)
        # Several tenants, as on a shared cluster: one app alone may hold at
        # most PICLOUD_APP_MAX_CONCURRENCY (100) of the 200 slots.
        self.apps, self.scripts = [], []
        for n in range(self.args.apps):
            app = App.objects.create(slug=f"bench-{n}", name=f"Bench {n}")
            AppMembership.objects.create(app=app, principal=self.principal, role="admin")
            script = Script.objects.create(app=app, name="hook", runtime="webhook", webhook_url=url)
            PgTriggerRepo().create(
                NewTrigger(
                    app_id=app.id,
                    kind="kv",
                    script_id=script.id,
                    name="orders",
                    registered_by_principal=self.principal.id,
                    kv=KvSpec("orders", ("insert",)),
                )
            )
            self.apps.append(app)
            self.scripts.append(script)

    def sql(self, statement: str, params=None) -> list:
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            cur = c.execute(statement, params)
            return cur.fetchall() if cur.description else []

    # -- who holds which connection ---------------------------------------

    def connections_by_pid(self, pids: list[int]) -> dict[int, int]:
        """PostgreSQL connections each process holds now, matched by client port."""
        ports = {
            row[0]
            for row in self.sql(
                "SELECT client_port FROM pg_stat_activity WHERE datname = %s", (BENCH_DB,)
            )
        }
        return {pid: len(self._pg_ports(pid) & ports) for pid in pids}

    def backends(self) -> list[int]:
        """The server processes of every connection to the scratch database now."""
        return [
            row[0]
            for row in self.sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (BENCH_DB,),
            )
        ]

    def listening(self, pids: list[int]) -> list[int]:
        """The processes among `pids` that hold a LISTEN connection (a
        PiCloud dispatcher or a procrastinate worker, ready)."""
        ports = {
            row[0]
            for row in self.sql(
                "SELECT client_port FROM pg_stat_activity WHERE datname = %s "
                "AND query ILIKE 'LISTEN %%'",
                (BENCH_DB,),
            )
        }
        return [pid for pid in pids if self._pg_ports(pid) & ports]

    def _pg_ports(self, pid: int) -> set[int]:
        try:
            return {
                c.laddr.port
                for c in psutil.Process(pid).net_connections(kind="tcp")
                if c.raddr and c.raddr.port == self.pg_port
            }
        except psutil.NoSuchProcess:
            return set()


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", *argv],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def tree(proc: subprocess.Popen) -> list[int]:
    root = psutil.Process(proc.pid)
    return [root.pid, *(p.pid for p in root.children(recursive=True))]


class Sampler:
    """RSS and PostgreSQL connections of some processes, every `every` seconds."""

    def __init__(self, setup: Setup, pids: list[int], every: float = 0.25) -> None:
        self.setup, self.pids, self.every = setup, pids, every
        self.rss: dict[int, list[float]] = {pid: [] for pid in pids}
        self.connections: dict[int, list[int]] = {pid: [] for pid in pids}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def _run(self) -> None:
        while not self.done.wait(self.every):
            for pid, count in self.setup.connections_by_pid(self.pids).items():
                self.connections[pid].append(count)
            for pid in self.pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    self.rss[pid].append(psutil.Process(pid).memory_info().rss / 2**20)

    def summary(self) -> dict[int, dict]:
        return {
            pid: {
                "rss_peak": max(self.rss[pid], default=0.0),
                "connections_peak": max(self.connections[pid], default=0),
            }
            for pid in self.pids
        }


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy, and in all, so far."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0), sum(times)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class Contender:
    """Start, warm, deliver `n` in a timed round, stop."""

    name = ""

    def __init__(self, setup: Setup, sink: Sink, tmp: Path) -> None:
        self.setup, self.sink, self.tmp = setup, sink, tmp
        self.rates: list[float] = []
        self.peaks: list[int] = []
        self.means: list[float] = []  # requests waiting at the sink, time-weighted mean
        self.first_lags: list[float] = []  # seconds from the commit to the first request
        self.settle_lags: list[float] = []  # seconds from the last answer to an empty queue
        # CPU ms per delivery: the contender's workers, the sink, the database's
        # backends for this database; and the share of the machine's cores busy.
        self.cpu: list[dict[str, float]] = []
        self.workers: list[int] = []
        self.samples: dict[int, dict] = {}

    def deliver(self, n: int, tag: str) -> float:
        """Enqueue n deliveries in one transaction; the commit's time."""
        raise NotImplementedError

    def backlog(self) -> int:
        raise NotImplementedError

    def round(self, n: int, tag: str, timeout: float) -> None:
        self.sink.reset()
        with Sampler(self.setup, self.workers) as sampler:
            committed = self.deliver(n, tag)
            # From the commit: enqueueing is not what the CPU figures study.
            groups = {
                "workers": self.workers,
                "sink": [self.sink.proc.pid],
                "postgres": self.setup.backends(),
            }
            before = {name: cpu_seconds(pids) for name, pids in groups.items()}
            busy, total = machine_busy()
            stats = self.sink.wait_for(n, timeout)
            while self.backlog():
                time.sleep(0.02)
            settled = time.time()
            busy, total = (a - b for a, b in zip(machine_busy(), (busy, total), strict=True))
        cpu = {name: (cpu_seconds(pids) - before[name]) / n * 1000 for name, pids in groups.items()}
        cpu["machine_busy"] = busy / total if total else 0.0
        self.cpu.append(cpu)

        for pid, s in sampler.summary().items():
            seen = self.samples.setdefault(pid, {"rss_peak": 0.0, "connections_peak": 0})
            seen["rss_peak"] = max(seen["rss_peak"], s["rss_peak"])
            seen["connections_peak"] = max(seen["connections_peak"], s["connections_peak"])
        self.rates.append(n / (stats["last_answer_at"] - committed))
        self.peaks.append(stats["peak"])
        self.means.append(stats["mean_in_flight"])
        self.first_lags.append(stats["first_at"] - committed)
        self.settle_lags.append(max(0.0, settled - stats["last_answer_at"]))
        print(
            f"{tag}: {self.name} {self.rates[-1]:,.0f} deliveries/s, first after "
            f"{self.first_lags[-1] * 1000:.0f} ms, {self.means[-1]:.0f} waiting at the sink on "
            f"average (peak {self.peaks[-1]}), {stats['requests'] - n} redelivered; CPU ms per "
            f"delivery: workers {cpu['workers']:.2f}, sink {cpu['sink']:.2f}, PostgreSQL "
            f"{cpu['postgres']:.2f}; machine {cpu['machine_busy']:.0%} busy",
            flush=True,
        )

    def warm(self) -> None:
        self.sink.reset()
        self.deliver(WARMUP, f"warm-{self.name}")
        self.sink.wait_for(WARMUP, 60)
        while self.backlog():
            time.sleep(0.05)

    def wait_ready(self, procs: list[int], expected: int, what: str) -> list[int]:
        deadline = time.monotonic() + 60
        while len(ready := self.setup.listening(procs)) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {len(ready)} of {expected} processes listening")
            time.sleep(0.2)
            procs = self.processes()
        return ready

    def processes(self) -> list[int]:
        raise NotImplementedError


class PiCloud(Contender):
    name = "picloud"

    def start(self) -> None:
        self.proc = start(["qcluster"], self.setup.env, self.tmp / "qcluster.log")
        self.workers = self.wait_ready(self.processes(), self.setup.workers, "qcluster")

    def processes(self) -> list[int]:
        return tree(self.proc)

    def stop(self) -> None:
        stop(self.proc)

    def deliver(self, n: int, tag: str) -> float:
        from django.db import transaction

        from picloud import kv

        apps, principal = self.setup.apps, self.setup.principal
        with transaction.atomic():
            for i in range(n):
                app = apps[i % len(apps)]
                kv.put(app, "orders", f"{tag}-{i}", {"n": i}, principal=principal)
        return time.time()

    def backlog(self) -> int:
        return self.setup.sql("SELECT count(*) FROM outbox")[0][0]


class Procrastinate(Contender):
    name = "procrastinate"

    def start(self) -> None:
        argv = [
            "procrastinate",
            "worker",
            f"--concurrency={self.setup.in_flight}",
            "--delete-jobs=successful",
        ]
        self.procs = [
            start(argv, self.setup.env, self.tmp / f"procrastinate-{i}.log")
            for i in range(self.setup.workers)
        ]
        self.workers = self.wait_ready(self.processes(), len(self.procs), "procrastinate")

    def processes(self) -> list[int]:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            stop(p)

    def deliver(self, n: int, tag: str) -> float:
        from benchmarks.tasks import procrastinate_webhook
        from picloud.kv.hooks import KvEvent

        apps, scripts = self.setup.apps, self.setup.scripts
        jobs = [
            {
                "url": scripts[i % len(apps)].webhook_url,
                "secret": scripts[i % len(apps)].secret,
                "delivery": f"{tag}-{i}",
                "payload": KvEvent(
                    apps[i % len(apps)].id,
                    apps[i % len(apps)].slug,
                    "orders",
                    f"{tag}-{i}",
                    "insert",
                    None,
                    {"n": i},
                    1,
                ).payload(),
            }
            for i in range(n)
        ]
        procrastinate_webhook.batch_defer(*jobs)  # one statement, autocommit
        return time.time()

    def backlog(self) -> int:
        return self.setup.sql(
            "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
        )[0][0]


def sink_alone(sink: Sink, requests: int) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "benchmarks" / "loadgen.py"),
            sink.url,
            f"--requests={requests}",
            f"--concurrency={SINK_ALONE_IN_FLIGHT}",
            f"--warmup={SINK_ALONE_IN_FLIGHT}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out)
    result["bound"] = SINK_ALONE_IN_FLIGHT / ENDPOINT_LATENCY
    result["peak"] = sink.stats()["peak"]
    print(
        f"sink alone: {result['rate']:,.0f} req/s at {SINK_ALONE_IN_FLIGHT} in flight "
        f"({result['rate'] / result['bound']:.0%} of {result['bound']:,.0f}/s)",
        flush=True,
    )
    return result


def run(args) -> tuple[Setup, dict, list[Contender]]:
    sink = Sink(ENDPOINT_LATENCY)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "picloud-bench-webhooks"
    tmp.mkdir(exist_ok=True)
    contenders: list[Contender] = []
    try:
        setup = Setup(args, sink)
        alone = sink_alone(sink, args.sink_requests)
        contenders.append(PiCloud(setup, sink, tmp))
        if setup.has_procrastinate:
            contenders.append(Procrastinate(setup, sink, tmp))
        else:
            print("procrastinate is not installed: PiCloud only", flush=True)
        started: list[Contender] = []
        try:
            for c in contenders:
                c.start()
                started.append(c)
                c.warm()
            for r in range(args.rounds):
                for c in contenders:
                    c.round(args.deliveries, f"round {r + 1}", args.timeout)
        finally:
            for c in started:
                c.stop()
        setup.pg_version = setup.sql("SHOW server_version")[0][0]
    finally:
        sink.close()
    return setup, alone, contenders


def render(setup: Setup, alone: dict, contenders: list[Contender], command: str) -> str:
    args = setup.args
    slots = setup.workers * setup.in_flight
    bound = slots / ENDPOINT_LATENCY
    lines = [
        BEGIN,
        "## Webhooks to a 100 ms endpoint",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}",
        f"- PostgreSQL {setup.pg_version}; {setup.workers} worker processes x "
        f"{setup.in_flight} in flight for both contenders (PiCloud's defaults: "
        "`PICLOUD_QCLUSTER_WORKERS`, `PICLOUD_DISPATCHER_MAX_IN_FLIGHT`; procrastinate "
        f"`--concurrency {setup.in_flight}`); the sink, the contenders, this script and "
        "PostgreSQL share the machine's cores.",
        f"- The sink alone (aiohttp client in its own process, {SINK_ALONE_IN_FLIGHT} in "
        f"flight, {args.sink_requests:,} requests): **{alone['rate']:,.0f} req/s**, "
        f"{alone['rate'] / alone['bound']:.0%} of its bound of {alone['bound']:,.0f}/s, "
        f"peak {alone['peak']} waiting.",
        "",
        f"| contender | deliveries/s (median) | of the bound ({bound:,.0f}/s) | at the sink: "
        "mean / peak waiting | first request after (ms) | settled after the last answer (s) | "
        "CPU ms per delivery: workers / sink / PostgreSQL | machine busy | RSS per worker, "
        "peak (MiB) | PostgreSQL connections per worker, peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    labels = {
        "picloud": "**PiCloud** under qcluster",
        "procrastinate": "procrastinate, async task",
    }
    for c in contenders:

        def cpu(name: str, c: Contender = c) -> float:
            return statistics.median(r[name] for r in c.cpu)

        rate = statistics.median(c.rates)
        rss = ", ".join(f"{s['rss_peak']:.0f}" for s in c.samples.values())
        conns = ", ".join(str(s["connections_peak"]) for s in c.samples.values())
        lines.append(
            f"| {labels[c.name]} | {rate:,.0f} | {rate / bound:.0%} | "
            f"{statistics.median(c.means):.0f} / {max(c.peaks)} | "
            f"{statistics.median(c.first_lags) * 1000:.0f} | "
            f"{statistics.median(c.settle_lags):.2f} | "
            f"{cpu('workers'):.2f} / {cpu('sink'):.2f} / {cpu('postgres'):.2f} | "
            f"{cpu('machine_busy'):.0%} | {rss} | {conns} |"
        )
    ours = contenders[0]
    rate = statistics.median(ours.rates)
    checks = [
        f"{rate:,.0f} deliveries/s (target ≥ 1,000)",
        f"{rate / bound:.0%} of the Little's-law bound, {slots} slots / "
        f"{ENDPOINT_LATENCY * 1000:.0f} ms = {bound:,.0f}/s (target ≥ 80 %)",
        "PostgreSQL connections per worker process, peak: "
        + ", ".join(str(s["connections_peak"]) for s in ours.samples.values())
        + " (target ≤ 5)",
    ]
    if len(contenders) > 1:
        theirs = statistics.median(contenders[1].rates)
        checks.append(
            f"{rate / theirs:.2f} times procrastinate's throughput ({theirs:,.0f}/s; target ≥ 1)"
        )
    else:
        checks.append("procrastinate not measured: `pip install -r benchmarks/requirements.txt`")
    lines += ["", "Targets, within this run:", ""] + [f"- {c}" for c in checks]
    lines += [
        "",
        f"{args.rounds} rounds of {args.deliveries:,} deliveries, alternating between the "
        "contenders, after an untimed warm-up of "
        f"{WARMUP} each; per round, PiCloud: "
        + ", ".join(f"{r:,.0f}" for r in ours.rates)
        + (
            "; procrastinate: " + ", ".join(f"{r:,.0f}" for r in contenders[1].rates)
            if len(contenders) > 1
            else ""
        )
        + f" deliveries/s. The deliveries are spread over {setup.args.apps} apps (tenants), "
        "each with its own webhook script and KV trigger: one app alone may hold at most "
        "`PICLOUD_APP_MAX_CONCURRENCY` (100) of the 200 slots. PiCloud's round writes the "
        "KV entries through `picloud.kv.put` in one transaction (a KV trigger on the webhook script fans each out to an outbox row); "
        "procrastinate's defers the same events as jobs in one `batch_defer`. Timed from that "
        "commit until the sink answered the last distinct delivery (the `X-PiCloud-Delivery` "
        "header). At the sink: requests waiting at once, time-weighted mean from the first "
        "arrival to the last answer (by Little's law, deliveries/s x 0.1 s over the same span) "
        "and peak; medians of the rounds, peak of all. RSS and connections are "
        "sampled every 0.25 s while the rounds run (connections matched to processes by client "
        "port in pg_stat_activity). CPU: user + system time from the commit until the queue "
        "is empty (settling included) of the worker processes, the sink, and the PostgreSQL "
        "backends serving the scratch database, per delivery; machine busy is the share of "
        "all cores busy meanwhile, other work on the machine included.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=5_000, help="per round and contender")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--apps", type=int, default=4, help="tenants the deliveries are spread over"
    )
    parser.add_argument("--sink-requests", type=int, default=6_000)
    parser.add_argument("--timeout", type=float, default=120, help="seconds a round may take")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    args = parser.parse_args()
    command = "python benchmarks/webhooks.py" + "".join(f" {a}" for a in sys.argv[1:])
    setup, alone, contenders = run(args)
    section = render(setup, alone, contenders, command)
    print(section)
    if not args.no_write:
        write_report(section, BEGIN, END)


if __name__ == "__main__":
    main()
