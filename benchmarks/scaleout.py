"""Scale-out: 1, 2 and 3 dispatcher nodes on one PostgreSQL; writes docs/benchmarks.md.

    make bench-scale     (= .venv/bin/python benchmarks/scaleout.py)

One PostgreSQL (DATABASE_URL, or the embedded one), a scratch database
(`picloud_bench_scale`, or BENCH_DATABASE), a webhook sink (benchmarks/sink.py,
answering 200 after 100 ms). A node is one `manage.py qcluster` process tree
on the project's defaults (PICLOUD_QCLUSTER_WORKERS worker processes, each
keeping PICLOUD_DISPATCHER_MAX_IN_FLIGHT executions in flight). For 1, 2 and 3
nodes, with the rows spread over `--apps` apps:
  1. noop drain: `--noop-rows` rows of the `picloud.noop` handler inserted in
     one transaction, timed from its commit until the outbox is empty;
  2. webhook drain: the same with `--webhook-rows` rows of a webhook script
     posting to the sink;
  3. steady noop, then steady webhooks: rows written in a transaction every
     20 ms at a fixed rate for `--steady-seconds`, the rate being
     `--steady-share` of the 1-node drain rate measured in the first
     repetition (which always starts with 1 node), the same for every node
     count.
Start latency is the delivery log's `started_at` of each row's first
attempt minus the commit that made the row due (one commit for a drain; each
batch's for the steady load). CPU is sampled from /proc per process group
over each round (benchmarks/cpu_groups.py). Repetitions rotate the order of
the node counts; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

from benchmarks.cpu_groups import CpuGroups  # noqa: E402
from benchmarks.run import (  # noqa: E402
    machine,
    percentile,
    scratch_database,
    start_django,
    write_report,
)
from benchmarks.sink import Sink  # noqa: E402
from picloud.db.pgconn import database_url  # noqa: E402

BEGIN, END = "<!-- scaleout-benchmark:begin -->", "<!-- scaleout-benchmark:end -->"
NODE_COUNTS = (1, 2, 3)
ENDPOINT_LATENCY = 0.1  # seconds the sink waits before answering
STEADY_TICK = 0.02  # seconds between the steady writer's commits
POLL = 0.05  # seconds between looks at the outbox while it drains
WARMUP_ROWS = 2_000  # untimed noop rows per node count (code loaded, plans cached)
WARMUP_HOOKS = 400  # untimed webhook rows per node count (connection pools opened)
# Settings a developer's shell may carry that would move a node off the defaults.
NOT_DEFAULTS = ("PICLOUD_QCLUSTER_WORKERS", "PICLOUD_DISPATCHER_", "PICLOUD_SANDBOX_")
GROUPS = ("qcluster", "postgres", "pg_background", "sink", "bench")

INSERT_ROWS = """
INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload)
SELECT (%(apps)s::uuid[])[1 + (g + %(offset)s) %% %(k)s], 'kv',
       (%(scripts)s::uuid[])[1 + (g + %(offset)s) %% %(k)s], %(principal)s,
       jsonb_build_object('n', g)
FROM generate_series(1, %(n)s) g
"""

# Each row's first attempt: a row run twice (a lease that ran out) counts once here.
FIRST_STARTS = """
SELECT outbox_id, extract(epoch FROM min(started_at)), count(*)
FROM delivery_log GROUP BY outbox_id
"""


class Setup:
    """The scratch database, its seed, and the questions asked of it."""

    def __init__(self, args, sink: Sink) -> None:
        self.args = args
        self.db = os.environ.get("BENCH_DATABASE", "picloud_bench_scale")
        admin, self.conninfo = scratch_database(self.db)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(NOT_DEFAULTS)},
            "DATABASE_URL": database_url(admin, self.db),
            # INFO: a node says when each worker listens for rows.
            "PICLOUD_LOG_LEVEL": "INFO",
            "DJANGO_DEBUG": "false",
            "PICLOUD_DATABASE_ANNOUNCED": "1",
            # The sink listens on loopback over plain HTTP.
            "PICLOUD_WEBHOOK_ALLOW_PRIVATE": "true",
            "PICLOUD_WEBHOOK_ALLOW_HTTP": "true",
        }
        start_django({**self.env, "PICLOUD_LOG_LEVEL": "WARNING"}, only=True)
        from django.conf import settings

        from picloud.config import ConcurrencyConfig, DispatcherConfig

        self.workers = settings.Q_CLUSTER["workers"]
        self.in_flight = DispatcherConfig.current().max_in_flight
        self.handler_threads = DispatcherConfig.current().handler_threads
        self.app_cap = ConcurrencyConfig.current().app_max_concurrency
        self.seed(sink.url)
        self.conn = psycopg.connect(self.conninfo, autocommit=True)
        self.pg_version = self.sql("SHOW server_version")[0][0]

    def seed(self, url: str) -> None:
        from django.contrib.auth import get_user_model

        from picloud.models import App, AppMembership, Script, principal_for

        user = get_user_model().objects.create_user("bench", password=None)
        self.principal = principal_for(user).id
        self.apps, self.noops, self.hooks = [], [], []
        for n in range(self.args.apps):
            app = App.objects.create(slug=f"bench-{n}", name=f"Bench {n}")
            AppMembership.objects.create(app=app, principal_id=self.principal, role="admin")
            self.apps.append(app.id)
            self.noops.append(
                Script.objects.create(app=app, name="noop", handler="picloud.noop").id
            )
            self.hooks.append(
                Script.objects.create(app=app, name="hook", runtime="webhook", webhook_url=url).id
            )

    def sql(self, statement: str, params=None) -> list:
        cur = self.conn.execute(statement, params)
        return cur.fetchall() if cur.description else []

    def insert(self, conn, scripts: list, n: int, offset: int = 0, returning: bool = False):
        params = {
            "apps": self.apps,
            "scripts": scripts,
            "k": len(self.apps),
            "principal": self.principal,
            "n": n,
            "offset": offset,
        }
        cur = conn.execute(INSERT_ROWS + (" RETURNING id" if returning else ""), params)
        return [row[0] for row in cur] if returning else None

    def drained(self) -> bool:
        # Not count(*): scanning a large backlog every few milliseconds would
        # take CPU from the nodes being measured.
        return not self.sql("SELECT 1 FROM outbox LIMIT 1")

    def wait_drained(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while not self.drained():
            if time.monotonic() > deadline:
                left = self.sql("SELECT count(*) FROM outbox")[0][0]
                raise TimeoutError(f"{left} rows still in the outbox after {timeout:.0f}s")
            time.sleep(POLL)
        return time.time()

    def fresh(self) -> None:
        """The same start for every round: no dead tuples, an empty log."""
        self.sql("VACUUM ANALYZE outbox")
        self.sql("TRUNCATE delivery_log")

    def first_starts(self) -> dict:
        """{outbox id: (first attempt's start, attempts)} of the log."""
        return {row[0]: (float(row[1]), row[2]) for row in self.sql(FIRST_STARTS)}

    def processes(self, conn) -> dict[str, list[int]]:
        """PostgreSQL's processes, asked on `conn`: the scratch database's
        client backends, and the server's background processes (its
        autovacuum workers included), which other databases on the server
        share."""
        rows = conn.execute(
            "SELECT pid, backend_type = 'client backend' AND datname = %s FROM pg_stat_activity "
            "WHERE datname = %s OR datname IS NULL",
            (self.db, self.db),
        ).fetchall()
        return {
            "postgres": [pid for pid, client in rows if client],
            "pg_background": [pid for pid, client in rows if not client],
        }


class Node:
    """One `manage.py qcluster`: its process tree, its log."""

    def __init__(self, setup: Setup, log: Path) -> None:
        self.setup, self.log = setup, log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "qcluster"],
                cwd=PROJECT,
                env=setup.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while self.log.read_text().count("listening for outbox rows") < self.setup.workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"qcluster did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root.pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.NoSuchProcess:
            return []

    def connections(self, port: int) -> dict[int, int]:
        """Client ports of this tree's connections to PostgreSQL: {port: pid}."""
        out = {}
        for pid in self.pids():
            try:
                for c in psutil.Process(pid).net_connections(kind="tcp"):
                    if c.raddr and c.raddr.port == port:
                        out[c.laddr.port] = pid
            except psutil.NoSuchProcess:
                continue
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Rounds:
    """Every round's figures, by case and node count."""

    def __init__(self, setup: Setup, sink: Sink, tmp: Path) -> None:
        self.setup, self.sink, self.tmp = setup, sink, tmp
        # results[case][nodes] -> list of per-round dicts
        self.results: dict[str, dict[int, list[dict]]] = {}
        self.steady_rate: dict[str, float] = {}
        self.connections: dict[int, list[dict]] = {}
        self.nodes: list[Node] = []
        self.sampling: psycopg.Connection | None = None
        self.pg_port = int(psycopg.conninfo.conninfo_to_dict(setup.conninfo).get("port") or 5432)

    def groups(self) -> dict[str, list[int]]:
        # A connection of its own: the sampling thread asks while the main
        # thread polls the outbox.
        if self.sampling is None:
            self.sampling = psycopg.connect(self.setup.conninfo, autocommit=True)
        found = self.setup.processes(self.sampling)
        found["qcluster"] = self.node_pids
        found["sink"] = [self.sink.proc.pid]
        # This process: the steady writer, the drain's polling, the sampling.
        found["bench"] = [os.getpid()]
        return found

    def record(self, case: str, nodes: int, result: dict) -> None:
        self.results.setdefault(case, {}).setdefault(nodes, []).append(result)
        cores = result["cores"]
        print(
            f"{nodes} node(s) {case}: {result['rate']:,.0f} rows/s, start latency p50 "
            f"{result['p50'] * 1000:,.1f} ms p99 {result['p99'] * 1000:,.1f} ms; cores: "
            + ", ".join(f"{g} {cores.get(g, 0.0):.2f}" for g in (*GROUPS, "other"))
            + f"; machine {cores['machine']:.0%} busy; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )

    # -- nodes ----------------------------------------------------------------

    def start_nodes(self, count: int) -> None:
        self.nodes = [Node(self.setup, self.tmp / f"node-{i + 1}.log") for i in range(count)]
        try:
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.stop_nodes()
            raise
        self.node_pids = [pid for node in self.nodes for pid in node.pids()]

    def stop_nodes(self) -> None:
        for node in self.nodes:
            node.stop()
        self.nodes = []

    def count_connections(self) -> None:
        """Who holds which connection, per node, now."""
        activity = {
            row[0]: row[1:]
            for row in self.setup.sql(
                "SELECT client_port, backend_type, application_name, query ILIKE 'LISTEN %%' "
                "FROM pg_stat_activity WHERE datname = %s AND client_port IS NOT NULL",
                (self.setup.db,),
            )
        }
        for node in self.nodes:
            held = {p: pid for p, pid in node.connections(self.pg_port).items() if p in activity}
            per_process = sorted(
                (sum(1 for pid in held.values() if pid == holder) for holder in set(held.values())),
                reverse=True,
            )
            self.connections.setdefault(len(self.nodes), []).append(
                {
                    "total": len(held),
                    "per_process": " + ".join(map(str, per_process)),
                    "of_processes": len(node.pids()),
                    "listening": sum(1 for p in held if activity[p][2]),
                    "backend_types": sorted({activity[p][0] for p in held}),
                    "application_names": sorted({activity[p][1] or "(empty)" for p in held}),
                }
            )

    # -- rounds ---------------------------------------------------------------

    def warm(self) -> None:
        with psycopg.connect(self.setup.conninfo) as c:
            self.setup.insert(c, self.setup.noops, WARMUP_ROWS)
            self.setup.insert(c, self.setup.hooks, WARMUP_HOOKS)
        self.setup.wait_drained(120)

    def drain(self, case: str, nodes: int, scripts: list, n: int) -> None:
        """A backlog of n rows in one transaction, drained."""
        self.setup.fresh()
        self.sink.reset()
        with psycopg.connect(self.setup.conninfo) as c:
            self.setup.insert(c, scripts, n)
            with CpuGroups(self.groups) as cpu:
                c.commit()
                committed = time.time()
                emptied = self.setup.wait_drained(self.setup.args.timeout)
        starts = self.setup.first_starts()
        assert len(starts) == n, f"{case}: the log has {len(starts)} of {n} rows"
        latencies = [start - committed for start, _ in starts.values()]
        # Requests waiting at the sink (webhooks only): by Little's law the
        # executions actually in flight, to hold against the slots.
        at_sink = self.sink.stats()
        self.record(
            case,
            nodes,
            {
                "sink_mean": at_sink["mean_in_flight"],
                "sink_peak": at_sink["peak"],
                "rate": n / (emptied - committed),
                "p50": statistics.median(latencies),
                "p99": percentile(latencies, 99),
                "repeated": sum(attempts - 1 for _, attempts in starts.values()),
                "cores": cpu.cores(),
            },
        )

    def steady(self, case: str, nodes: int, scripts: list, rate: float) -> None:
        """Rows committed every STEADY_TICK at `rate` rows/s, then drained."""
        self.setup.fresh()
        self.sink.reset()
        seconds = self.setup.args.steady_seconds
        batches: list[tuple[list, float]] = []
        with CpuGroups(self.groups) as cpu, psycopg.connect(self.setup.conninfo) as c:
            began = time.monotonic()
            owed, tick = 0.0, 0
            while (due := began + tick * STEADY_TICK) < began + seconds:
                # Pacing to a schedule: a late batch is not made up by
                # sleeping less later, it writes what was owed.
                time.sleep(max(0.0, due - time.monotonic()))
                owed += rate * STEADY_TICK
                n, owed = int(owed), owed - int(owed)
                if n:
                    ids = self.setup.insert(c, scripts, n, offset=tick, returning=True)
                    c.commit()
                    batches.append((ids, time.time()))
                tick += 1
            written_for = time.monotonic() - began
            self.setup.wait_drained(self.setup.args.timeout)
        starts = self.setup.first_starts()
        written = sum(len(ids) for ids, _ in batches)
        assert len(starts) == written, f"{case}: the log has {len(starts)} of {written} rows"
        latencies = [starts[i][0] - at for ids, at in batches for i in ids]
        self.record(
            case,
            nodes,
            {
                "rate": written / written_for,
                "p50": statistics.median(latencies),
                "p99": percentile(latencies, 99),
                "repeated": sum(attempts - 1 for _, attempts in starts.values()),
                "cores": cpu.cores(),
            },
        )

    def run(self) -> None:
        args = self.setup.args
        for rep in range(args.rounds):
            # Rotated, so no node count always runs first (or last) in a
            # repetition; the first starts with 1 node, which fixes the
            # steady rates for all.
            order = NODE_COUNTS[rep % 3 :] + NODE_COUNTS[: rep % 3]
            for nodes in order:
                print(f"repetition {rep + 1}: {nodes} node(s)", flush=True)
                self.start_nodes(nodes)
                try:
                    self.warm()
                    self.count_connections()
                    self.drain("noop drain", nodes, self.setup.noops, args.noop_rows)
                    self.drain("webhook drain", nodes, self.setup.hooks, args.webhook_rows)
                    if not self.steady_rate:
                        share = args.steady_share
                        self.steady_rate = {
                            "noop": share * self.results["noop drain"][1][0]["rate"],
                            "webhook": share * self.results["webhook drain"][1][0]["rate"],
                        }
                    self.steady("steady noop", nodes, self.setup.noops, self.steady_rate["noop"])
                    self.steady(
                        "steady webhooks", nodes, self.setup.hooks, self.steady_rate["webhook"]
                    )
                finally:
                    self.stop_nodes()


def run(args) -> tuple[Setup, Rounds]:
    load_before = os.getloadavg()
    sink = Sink(ENDPOINT_LATENCY, port=args.sink_port)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "picloud-bench-scale"
    tmp.mkdir(exist_ok=True)
    try:
        setup = Setup(args, sink)
        rounds = Rounds(setup, sink, tmp)
        rounds.load_before = load_before
        rounds.run()
        rounds.load_after = os.getloadavg()
    finally:
        sink.close()
    return setup, rounds


def _median(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def _cores(rounds: list[dict], group: str) -> float:
    return statistics.median(r["cores"].get(group, 0.0) for r in rounds)


def render(setup: Setup, rounds: Rounds, command: str) -> str:
    args, res = setup.args, rounds.results
    slots = setup.workers * setup.in_flight
    noop1 = _median(res["noop drain"][1], "rate")
    hook1 = _median(res["webhook drain"][1], "rate")
    lines = [
        BEGIN,
        "## Scale-out: 1, 2 and 3 nodes",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}; load average (1 min) {rounds.load_before[0]:.2f} before the "
        f"run, {rounds.load_after[0]:.2f} after it",
        f"- PostgreSQL {setup.pg_version}, one server for every node. A node is one "
        f"`manage.py qcluster` on the defaults: {setup.workers} worker processes "
        f"(`PICLOUD_QCLUSTER_WORKERS`) x {setup.in_flight} executions in flight "
        f"(`PICLOUD_DISPATCHER_MAX_IN_FLIGHT`), {setup.handler_threads} handler threads per "
        f"process, app cap {setup.app_cap}; so {slots} slots per node. Every node, the sink, "
        "PostgreSQL and this script share the machine's cores.",
        "",
        "### Throughput and start latency",
        "",
        "| nodes | noop drain (rows/s) | x 1 node | webhook drain (deliveries/s) | x 1 node | "
        "of the slots' bound | waiting at the sink: mean / peak (slots) | "
        "steady noop p50 / p99 (ms) | steady webhooks p50 / p99 (ms) | "
        "drain p99: noop / webhooks (s) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for nodes in NODE_COUNTS:
        noop, hook = res["noop drain"][nodes], res["webhook drain"][nodes]
        sn, sw = res["steady noop"][nodes], res["steady webhooks"][nodes]
        bound = nodes * slots / ENDPOINT_LATENCY
        lines.append(
            f"| {nodes} | {_median(noop, 'rate'):,.0f} | {_median(noop, 'rate') / noop1:.2f} | "
            f"{_median(hook, 'rate'):,.0f} | {_median(hook, 'rate') / hook1:.2f} | "
            f"{_median(hook, 'rate') / bound:.0%} of {bound:,.0f}/s | "
            f"{_median(hook, 'sink_mean'):.0f} / {max(r['sink_peak'] for r in hook)} "
            f"({nodes * slots}) | "
            f"{_median(sn, 'p50') * 1000:.1f} / {_median(sn, 'p99') * 1000:.1f} | "
            f"{_median(sw, 'p50') * 1000:.1f} / {_median(sw, 'p99') * 1000:.1f} | "
            f"{_median(noop, 'p99'):.1f} / {_median(hook, 'p99'):.1f} |"
        )
    steady_noop = statistics.median(r["rate"] for n in NODE_COUNTS for r in res["steady noop"][n])
    steady_hook = statistics.median(
        r["rate"] for n in NODE_COUNTS for r in res["steady webhooks"][n]
    )

    def per_round(case: str, key: str, fmt: str) -> str:
        return "; ".join(
            f"{n} node{'s' if n > 1 else ''}: "
            + ", ".join(format(r[key] * (1000 if key != "rate" else 1), fmt) for r in res[case][n])
            for n in NODE_COUNTS
        )

    lines += [
        "",
        f"{args.rounds} repetitions; each starts 1, 2 or 3 nodes (the order rotates between "
        f"repetitions, the first starts with 1), warms them up ({WARMUP_ROWS:,} noop and "
        f"{WARMUP_HOOKS} webhook rows, untimed), then runs the four rounds below and stops "
        "the nodes. Medians of the repetitions.",
        "",
        f"- **Drains.** {args.noop_rows:,} rows of the `picloud.noop` handler (a plain "
        f"function, so it runs on the handler threads), then {args.webhook_rows:,} rows of a "
        "webhook script posting to the sink (benchmarks/sink.py, one aiohttp process answering "
        f"200 after {ENDPOINT_LATENCY * 1000:.0f} ms), spread over {args.apps} apps, inserted "
        "in one transaction and timed from its commit until the outbox is empty "
        "(acknowledgements included). The slots' bound is nodes x "
        f"{slots} slots / {ENDPOINT_LATENCY * 1000:.0f} ms. Per round, noop: "
        + per_round("noop drain", "rate", ",.0f")
        + "; webhooks: "
        + per_round("webhook drain", "rate", ",.0f")
        + ". Waiting at the sink: requests it held at once during a webhook drain, "
        "time-weighted mean (from the first arrival to the last answer) and peak; by "
        "Little's law the deliveries actually in flight, to hold against the nodes' slots. "
        "A drain's start latency is queueing: every row is due at the commit, so its "
        "p99 is close to the drain's length.",
        f"- **Steady load.** Rows written for {args.steady_seconds:.0f} s in one transaction "
        f"every {STEADY_TICK * 1000:.0f} ms, at {args.steady_share:.0%} of the 1-node drain "
        "rate of the first repetition, the same rate for every node count (written: "
        f"{steady_noop:,.0f} noop rows/s, {steady_hook:,.0f} webhook rows/s, medians), then "
        "drained. Start latency: from the commit that made a row due to its first attempt's "
        "`started_at` in the delivery log (`delivery_log`), every row; p50 / p99 per "
        "round, noop: "
        + per_round("steady noop", "p50", ".1f")
        + " (p50); "
        + per_round("steady noop", "p99", ".1f")
        + " (p99); webhooks: "
        + per_round("steady webhooks", "p50", ".1f")
        + " (p50); "
        + per_round("steady webhooks", "p99", ".1f")
        + " (p99) ms.",
    ]
    repeated = sum(r["repeated"] for case in res.values() for rs in case.values() for r in rs)
    lines.append(
        f"- Every row's attempts were counted in the log: {repeated} rows ran more than once."
    )
    lines += [
        "",
        "### Where the CPU goes",
        "",
        "Cores used on average over each round (median of the repetitions), user + system "
        "time from `/proc/<pid>/stat` sampled every 0.5 s: the nodes' process trees "
        "(`qcluster`), the PostgreSQL backends of the scratch database, PostgreSQL's "
        "background processes (WAL writer, checkpointer, autovacuum: the server's, shared "
        "with any other database on it), the sink, this script (the steady writer and the "
        "drain's polling), and the rest of the machine's busy time (`/proc/stat`: other work "
        "on the machine). The machine has "
        f"{os.cpu_count()} cores.",
        "",
        "| round | nodes | qcluster | PostgreSQL backends | PostgreSQL background | sink | "
        "this script | other | machine busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in ("noop drain", "webhook drain", "steady noop", "steady webhooks"):
        for nodes in NODE_COUNTS:
            rs = res[case][nodes]
            cells = " | ".join(
                f"{_cores(rs, g):.2f}" for g in ("qcluster", "postgres", "pg_background", "sink")
            )
            lines.append(
                f"| {case} | {nodes} | {cells} | {_cores(rs, 'bench'):.2f} | "
                f"{_cores(rs, 'other'):.2f} | {_cores(rs, 'machine'):.0%} |"
            )
    lines += ["", "### Connections per node", ""]
    for nodes, seen in sorted(rounds.connections.items()):
        totals = sorted({c["total"] for c in seen})
        listening = sorted({c["listening"] for c in seen})
        holders = sorted({f"{c['per_process']} ({c['of_processes']} processes)" for c in seen})
        kinds = sorted({k for c in seen for k in c["backend_types"]})
        names = sorted({k for c in seen for k in c["application_names"]})
        lines.append(
            f"- {nodes} node{'s' if nodes > 1 else ''} running: each node held "
            f"{' or '.join(map(str, totals))} connections ({' or '.join(map(str, listening))} "
            f"of them LISTENing), per process holding any: {' or '.join(holders)}; backend "
            f"type {', '.join(kinds)}, application_name {', '.join(names)}."
        )
    lines += [
        "",
        "Counted in `pg_stat_activity` after each warm-up, matched to a node's processes by "
        "client port.",
        END,
    ]
    return "\n".join(lines)


# Arguments that change where the benchmark runs, not what it measures.
NOT_QUOTED = ("--sink-port", "--no-write")


def quoted_command(argv: list[str]) -> str:
    measured = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.split("=", 1)[0] in NOT_QUOTED:
            skip = "=" not in arg and arg != "--no-write"
            continue
        measured.append(arg)
    if not measured:
        return "make bench-scale"
    return " ".join(["python benchmarks/scaleout.py", *measured])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noop-rows", type=int, default=150_000, help="per noop drain")
    parser.add_argument("--webhook-rows", type=int, default=20_000, help="per webhook drain")
    parser.add_argument("--steady-seconds", type=float, default=15.0)
    parser.add_argument("--steady-share", type=float, default=0.6, help="of the 1-node drain rate")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every node count")
    parser.add_argument("--apps", type=int, default=4, help="tenants the rows are spread over")
    parser.add_argument("--timeout", type=float, default=300, help="seconds a drain may take")
    parser.add_argument("--sink-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/")
    args = parser.parse_args()
    setup, rounds = run(args)
    section = render(setup, rounds, quoted_command(sys.argv[1:]))
    print(section)
    if not args.no_write:
        write_report(section, BEGIN, END)


if __name__ == "__main__":
    main()
