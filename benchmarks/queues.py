"""Topics and queues under qcluster, beside pgmq's floor; writes its section
of docs/benchmarks.md.

    make bench-queues     (= .venv/bin/python benchmarks/queues.py)

One PostgreSQL (DATABASE_URL, or the embedded one), a scratch database
`picloud_bench_queues`, `manage.py qcluster` with `--processes` worker
processes, each hosting a dispatcher and its queue batcher. Measured:
  1. publish -> first subscriber start: a topic with 3 pubsub triggers of
     a handler that reports its start over UDP (benchmarks/probe.py);
     `--publishes` publishes through picloud.messaging.topics at a steady
     `--rate` from this process, each alternating with a KV write (3 KV
     triggers of the same handler) for comparison; latency = the first of
     the 3 starts minus the publish's commit;
  2. queue throughput: a queue trigger of a noop handler (batch size 10,
     then 100; max_concurrency 20; the app cap does not bind), `--messages`
     messages inserted while the trigger is disabled, timed from the commit
     that enables it until the queue is empty and no batch row is left
     (each look also counts the trigger's batch rows in the outbox: how
     often the dispatchers had none to run);
  3. the floor: pgmq's read and delete as bare SQL against a pgmq-shaped
     table (benchmarks/pgmq_floor.py), as many consumer processes as
     dispatcher processes, the same batch sizes and messages.
Throughput rounds interleave ours and the floor (the order flips each
round); medians of the rounds, and of the per-round ratios. Target (topics
and queues): the queue trigger drains >= 50 % of the floor's messages/s at
both batch sizes.
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

from benchmarks.pgmq_floor import TABLE as FLOOR_TABLE  # noqa: E402
from benchmarks.probe import Receiver  # noqa: E402
from benchmarks.run import (  # noqa: E402
    machine,
    percentile,
    scratch_database,
    section_main,
    start_django,
)
from benchmarks.webhooks import cpu_seconds, machine_busy, start, stop, tree  # noqa: E402
from picloud.db.pgconn import database_url  # noqa: E402

BENCH_DB = "picloud_bench_queues"
BEGIN, END = "<!-- queues-benchmark:begin -->", "<!-- queues-benchmark:end -->"
SUBSCRIBERS = 3  # pubsub triggers on the topic (and KV triggers on the collection)
BATCH_SIZES = (10, 100)
MAX_CONCURRENCY = 20  # batches of the queue trigger in the outbox at once
POLL = 0.02  # seconds between looks for an empty queue
# Settings a developer's shell may carry that would move PiCloud off its defaults.
NOT_DEFAULTS = ("PICLOUD_QCLUSTER_WORKERS", "PICLOUD_DISPATCHER_", "PICLOUD_SANDBOX_")


class Setup:
    def __init__(self, args) -> None:
        self.args = args
        self.receiver = Receiver()
        admin, self.conninfo = scratch_database(BENCH_DB)
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            self.pg_version = c.execute("SHOW server_version").fetchone()[0]
            c.execute(FLOOR_TABLE)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(NOT_DEFAULTS)},
            "DATABASE_URL": database_url(admin, BENCH_DB),
            "PICLOUD_EXTRA_APPS": "benchmarks",
            "PICLOUD_BENCH_PROBE": self.receiver.address,
            "PICLOUD_LOG_LEVEL": "INFO",  # the LISTEN threads say when they are up
            "DJANGO_DEBUG": "false",
            "PICLOUD_DATABASE_ANNOUNCED": "1",
            "PICLOUD_QCLUSTER_WORKERS": str(args.processes),
        }
        start_django({**self.env, "PICLOUD_LOG_LEVEL": "WARNING"})
        self.seed()
        # One connection for the looks at the queue while it drains.
        self.poller = psycopg.connect(self.conninfo, autocommit=True)

    def seed(self) -> None:
        from django.contrib.auth import get_user_model

        from picloud.messaging import queues, topics
        from picloud.models import App, AppMembership, Script, principal_for
        from triggers.pg_repository import PgTriggerRepo
        from triggers.repository import KvSpec, NewTrigger, PubsubSpec, QueueSpec

        user = get_user_model().objects.create_user("bench", password=None, is_staff=True)
        self.principal = principal_for(user)
        repo = PgTriggerRepo()
        self.pub = App.objects.create(slug="pub", name="Pub")
        work = App.objects.create(slug="work", name="Work")
        for app in (self.pub, work):
            AppMembership.objects.create(app=app, principal=self.principal, role="admin")
        probe = Script.objects.create(app=self.pub, name="probe", handler="bench.start_probe")
        topics.create_topic(self.pub, "orders", principal=self.principal)
        for i in range(SUBSCRIBERS):
            for kind, spec in (
                ("pubsub", {"pubsub": PubsubSpec("orders")}),
                ("kv", {"kv": KvSpec("orders", ("insert",))}),
            ):
                repo.create(
                    NewTrigger(
                        app_id=self.pub.id,
                        kind=kind,
                        script_id=probe.id,
                        name=f"{kind}-{i}",
                        registered_by_principal=self.principal.id,
                        **spec,
                    )
                )
        noop = Script.objects.create(app=work, name="noop", handler="bench.noop")
        # One queue and one (disabled) trigger per batch size; a round enables one.
        self.queues, self.triggers = {}, {}
        for size in BATCH_SIZES:
            queue = queues.create_queue(work, f"jobs-{size}", principal=self.principal)
            trigger = repo.create(
                NewTrigger(
                    app_id=work.id,
                    kind="queue",
                    script_id=noop.id,
                    name=f"drain-{size}",
                    registered_by_principal=self.principal.id,
                    enabled=False,
                    queue=QueueSpec(
                        queue_id=queue.id, batch_size=size, max_concurrency=MAX_CONCURRENCY
                    ),
                )
            )
            self.queues[size], self.triggers[size] = queue.id, trigger.id

    def sql(self, statement: str, params=None) -> list:
        with psycopg.connect(self.conninfo, autocommit=True) as c:
            cur = c.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def backends(self) -> list[int]:
        """The server processes of every connection to the scratch database
        (but the one asking)."""
        return [
            row[0]
            for row in self.sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (BENCH_DB,),
            )
        ]


# -- 1. publish -> first subscriber start ----------------------------------


def start_latency(setup: Setup, n: int, round_: str) -> dict:
    """Publishes and KV writes alternating at a steady rate (open loop: the
    next does not wait for the last one's subscribers); each one's first
    subscriber start minus its commit (ms)."""
    from picloud import kv
    from picloud.messaging import topics

    receiver = setup.receiver
    while receiver.receive(timeout=0.2):
        pass
    committed: dict[str, float] = {}
    gap = 1 / (2 * setup.args.rate)  # the publishes and the writes share the schedule
    began = time.monotonic()
    for i in range(n):
        for kind in ("pub", "kv"):
            tag = f"{kind}-{round_}-{i}"  # a new key each time: the KV triggers fire on insert
            if kind == "pub":
                topics.publish(setup.pub, "orders", {"tag": tag}, principal=setup.principal)
            else:
                kv.put(setup.pub, "orders", tag, {"tag": tag}, principal=setup.principal)
            committed[tag] = time.time()  # both return after their transaction's commit
            k = 2 * i + (kind == "kv") + 1
            time.sleep(max(0.0, began + k * gap - time.monotonic()))
    starts: dict[str, list[float]] = {}
    expected = SUBSCRIBERS * len(committed)
    while sum(map(len, starts.values())) < expected:
        hit = receiver.receive(timeout=10.0)
        if hit is None:
            break
        starts.setdefault(hit[0], []).append(hit[1])
    result = {}
    for kind, label in (("pub", "publish"), ("kv", "kv")):
        tags = [t for t in committed if t.startswith(kind)]
        missing = [t for t in tags if len(starts.get(t, [])) != SUBSCRIBERS]
        assert not missing, f"{label}: {len(missing)} events without {SUBSCRIBERS} starts each"
        first = [(min(starts[t]) - committed[t]) * 1000 for t in tags]
        last = [(max(starts[t]) - committed[t]) * 1000 for t in tags]
        result[label] = {
            "n": len(tags),
            "p50": statistics.median(first),
            "p99": percentile(first, 99),
            "max": max(first),
            "all_p50": statistics.median(last),
            "all_p99": percentile(last, 99),
        }
    return result


# -- 2. and 3. queue throughput: ours and the floor -------------------------


def insert_messages(setup: Setup, table: str, n: int, queue_id=None) -> None:
    """n messages {"n": i} in one statement, on a table vacuumed first and
    analyzed after (both sides start from the same state)."""
    setup.sql(f"VACUUM {table}")
    if table == "queue_messages":
        setup.sql("VACUUM outbox")
        setup.sql(
            "INSERT INTO queue_messages (queue_id, body) "
            "SELECT %s, jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (queue_id, n),
        )
    else:
        setup.sql(
            "INSERT INTO pgmq_floor (message) "
            "SELECT jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (n,),
        )
    setup.sql(f"ANALYZE {table}")


class Measure:
    """CPU seconds of some processes and of the database's backends, and the
    machine's busy share, between `begin` and `end`."""

    def begin(self, setup: Setup, workers: list[int]) -> None:
        self.groups = {"workers": workers, "postgres": setup.backends()}
        self.before = {name: cpu_seconds(pids) for name, pids in self.groups.items()}
        self.busy = machine_busy()

    def end(self, n: int) -> dict:
        busy, total = (a - b for a, b in zip(machine_busy(), self.busy, strict=True))
        cpu = {
            name: (cpu_seconds(pids) - self.before[name]) / n * 1e6
            for name, pids in self.groups.items()
        }  # µs per message
        cpu["machine_busy"] = busy / total if total else 0.0
        return cpu


def floor_round(setup: Setup, size: int) -> dict:
    n = setup.args.messages
    insert_messages(setup, "pgmq_floor", n)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(PROJECT / "benchmarks" / "pgmq_floor.py"),
                setup.conninfo,
                str(size),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(setup.args.processes)
    ]
    time.sleep(1.0)  # let them connect; not timed
    measure = Measure()
    measure.begin(setup, [p.pid for p in procs])
    started = time.time()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.stdout.readline().strip() == "done", "a floor consumer failed"
    elapsed = time.time() - started
    cpu = measure.end(n)  # before they exit: their processes and backends still exist
    for p in procs:
        p.stdin.write("exit\n")
        p.stdin.flush()
        p.wait()
    left = setup.sql("SELECT count(*) FROM pgmq_floor")[0][0]
    assert left == 0, f"the floor's consumers left {left} messages"
    return {"rate": n / elapsed, "cpu": cpu}


def ours_round(setup: Setup, size: int, workers: list[int]) -> dict:
    n, queue, trigger = setup.args.messages, setup.queues[size], setup.triggers[size]
    insert_messages(setup, "queue_messages", n, queue)
    measure = Measure()
    measure.begin(setup, workers)
    with psycopg.connect(setup.conninfo) as c:
        # The batchers fill enabled triggers only; the NOTIFY wakes them.
        c.execute("UPDATE triggers SET enabled = TRUE WHERE id = %s", (trigger,))
        c.execute("NOTIFY picloud_queue")
        c.commit()
        committed = time.time()
    looks = []  # batch rows of the trigger in the outbox, at each look
    while True:
        batches, waiting = setup.poller.execute(
            "SELECT (SELECT count(*) FROM outbox WHERE trigger_id = %s), "
            "EXISTS (SELECT 1 FROM queue_messages WHERE queue_id = %s)",
            (trigger, queue),
        ).fetchone()
        if not (batches or waiting):
            break
        looks.append(batches)
        time.sleep(POLL)
    elapsed = time.time() - committed
    cpu = measure.end(n)
    setup.sql("UPDATE triggers SET enabled = FALSE WHERE id = %s", (trigger,))
    dead = setup.sql("SELECT count(*) FROM dead_letters")[0][0]
    assert dead == 0, f"{dead} dead letters: a noop batch failed"
    return {
        "rate": n / elapsed,
        "cpu": cpu,
        "batches_mean": statistics.mean(looks) if looks else 0.0,
        "starved": looks.count(0) / len(looks) if looks else 0.0,
    }


def throughput(setup: Setup, workers: list[int]) -> dict:
    """Rounds of: for each batch size, the floor and ours (which goes first
    flips each round, so neither always meets the other's leftovers)."""
    results = {size: {"floor": [], "ours": []} for size in BATCH_SIZES}
    for r in range(setup.args.rounds):
        for size in BATCH_SIZES:
            order = ("floor", "ours") if r % 2 == 0 else ("ours", "floor")
            for side in order:
                if side == "floor":
                    out = floor_round(setup, size)
                else:
                    out = ours_round(setup, size, workers)
                results[size][side].append(out)
                starved = (
                    f"; {out['batches_mean']:.1f} batch rows on average, none at "
                    f"{out['starved']:.0%} of looks"
                    if side == "ours"
                    else ""
                )
                print(
                    f"round {r + 1}, batch {size}: {side} {out['rate']:,.0f} messages/s; "
                    f"CPU µs/message: workers {out['cpu']['workers']:.0f}, PostgreSQL "
                    f"{out['cpu']['postgres']:.0f}; machine {out['cpu']['machine_busy']:.0%} busy"
                    + starved,
                    flush=True,
                )
    return results


def wait_listening(log: Path, processes: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while log.read_text().count("listening for outbox rows") < processes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"qcluster did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def run(args) -> tuple[Setup, dict]:
    setup = Setup(args)
    log = Path(tempfile.gettempdir()) / "picloud-bench-queues.log"
    proc = start(["qcluster"], setup.env, log)
    results: dict = {"load": os.getloadavg()[0]}  # other work on the machine skews the figures
    try:
        wait_listening(log, args.processes)
        # Warm-up, untimed: the processes have connected and run handlers.
        start_latency(setup, 20, "warm")
        workers = tree(proc)
        print("publish -> first start...", flush=True)
        results["latency"] = start_latency(setup, args.publishes, "timed")
        print(results["latency"], flush=True)
        print("queue throughput beside the floor...", flush=True)
        results["throughput"] = throughput(setup, workers)
    finally:
        stop(proc)
        setup.poller.close()
    return setup, results


def _median(rounds: list[dict], key: str = "rate") -> float:
    return statistics.median(r[key] for r in rounds)


def _cpu(rounds: list[dict], key: str) -> float:
    return statistics.median(r["cpu"][key] for r in rounds)


def render(setup: Setup, results: dict, command: str) -> str:
    args = setup.args
    lat = results["latency"]
    lines = [
        BEGIN,
        "## Topics and queues",
        "",
        f"- Command: `{command}`",
        f"- Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {machine()}; load average {results['load']:.1f} when the run began",
        f"- PostgreSQL {setup.pg_version}; `qcluster` with {args.processes} worker processes "
        "(each a dispatcher and its queue batcher) on the defaults otherwise; the floor's "
        f"{args.processes} consumer processes, this script and PostgreSQL share the cores.",
        "",
        f"Publish to first subscriber start: a topic with {SUBSCRIBERS} pubsub triggers of one "
        f"handler, {lat['publish']['n']} publishes through `picloud.messaging.topics.publish` at "
        f"{args.rate:g}/s, each followed {1000 / (2 * args.rate):.0f} ms later by a write through "
        f"`picloud.kv.put` to a collection with {SUBSCRIBERS} KV triggers of the same handler "
        "(open loop: nothing waits for the subscribers); from the commit to the handler's first "
        "line, reported over UDP on loopback.",
        "",
        "| event | events | first start p50 (ms) | p99 (ms) | max (ms) | "
        f"all {SUBSCRIBERS} started p50 (ms) | p99 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("publish", f"publish to a topic ({SUBSCRIBERS} pubsub triggers)"),
        ("kv", f"KV write ({SUBSCRIBERS} KV triggers)"),
    ):
        r = lat[key]
        lines.append(
            f"| {label} | {r['n']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} | "
            f"{r['all_p50']:.1f} | {r['all_p99']:.1f} |"
        )
    tp = results["throughput"]
    lines += [
        "",
        f"Queue throughput: {args.messages:,} messages a round, {args.rounds} rounds; medians, "
        "and the median of the per-round ratios.",
        "",
        "| batch size | pgmq floor (messages/s) | **queue trigger** (messages/s) | ours / floor "
        "| per round |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    checks, ratios_of = [], {}
    for size in BATCH_SIZES:
        floor, ours = tp[size]["floor"], tp[size]["ours"]
        ratios = ratios_of[size] = [o["rate"] / f["rate"] for o, f in zip(ours, floor, strict=True)]
        ratio = statistics.median(ratios)
        lines.append(
            f"| {size} | {_median(floor):,.0f} | {_median(ours):,.0f} | **{ratio:.0%}** | "
            + ", ".join(f"{x:.0%}" for x in ratios)
            + " |"
        )
        checks.append(f"batch {size}: {ratio:.0%} ({'met' if ratio >= 0.5 else 'missed'})")
    lines += [
        "",
        "Target: the queue trigger drains at least 50 % of the floor's messages/s at both batch "
        "sizes: " + "; ".join(checks) + ".",
        "",
        "Where the time goes (medians of the rounds):",
        "",
        "| batch size | CPU µs per message, floor: consumers + PostgreSQL | ours: qcluster + "
        "PostgreSQL | machine busy, floor / ours | ours: batch rows in the outbox, mean | "
        "ours: looks finding no batch row |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in BATCH_SIZES:
        floor, ours = tp[size]["floor"], tp[size]["ours"]
        lines.append(
            f"| {size} | {_cpu(floor, 'workers'):.0f} + {_cpu(floor, 'postgres'):.0f} "
            f"| {_cpu(ours, 'workers'):.0f} + {_cpu(ours, 'postgres'):.0f} "
            f"| {_cpu(floor, 'machine_busy'):.0%} / {_cpu(ours, 'machine_busy'):.0%} "
            f"| {_median(ours, 'batches_mean'):.1f} of {MAX_CONCURRENCY} "
            f"| {_median(ours, 'starved'):.0%} |"
        )
    per_round = "; ".join(
        f"batch {size}, floor "
        + ", ".join(f"{r['rate']:,.0f}" for r in tp[size]["floor"])
        + ", ours "
        + ", ".join(f"{r['rate']:,.0f}" for r in tp[size]["ours"])
        for size in BATCH_SIZES
    )
    lines += [
        "",
        f"Per round (messages/s): {per_round}.",
        "",
        f"Ours: a queue trigger of a noop handler (`batch_size` 10 or 100, `max_concurrency` "
        f"{MAX_CONCURRENCY}, so at most {MAX_CONCURRENCY} batch rows in the outbox, under the "
        "app's cap), the messages inserted in one statement while it is disabled, timed from the "
        "commit that enables it (with a NOTIFY to the batchers) until the queue is empty and no "
        f"batch row is left, looked at every {POLL * 1000:.0f} ms (each look also counts the "
        "trigger's batch rows in the outbox). The floor: pgmq's `read` (the oldest visible "
        "msg_ids FOR UPDATE SKIP LOCKED, vt pushed 30 s ahead, read_ct + 1, the messages "
        f"returned) then `delete` of the ids read, one statement each, in {args.processes} bare "
        "psycopg loops (benchmarks/pgmq_floor.py) on a pgmq-shaped table, timed from their start "
        'until they find it empty. Both insert the same `{"n": i}` bodies; tables are vacuumed '
        "before and analyzed after the insert. Each round runs, per batch size, the floor then "
        "ours (ours first in even rounds). CPU: user + system time per message of the qcluster "
        "processes or the floor's consumers, and of the PostgreSQL backends serving the scratch "
        "database; machine busy: the share of all cores busy meanwhile, other work on the "
        "machine included.",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=2, help="qcluster workers; floor loops")
    parser.add_argument("--publishes", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="publishes (and writes) per s")
    section_main(parser, "bench-queues", run, render, BEGIN, END)


if __name__ == "__main__":
    main()
