"""The chaos run: a private PostgreSQL, a web server, the SMTP receiver and
three `qcluster` nodes; producers on every event source while faults
happen; then the drain and the ledger.

    python -m topology.chaos --seconds 300          # make chaos
    python -m topology.chaos --seconds 60 --rate 150  # CI's short run
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from topology.pgcluster import PgCluster

from .stack import PROJECT_DIR, Node, smtp, web

logger = logging.getLogger("chaos")

# Below the kernel's ephemeral range (32768 on), where a client socket could hold them.
PORTS = {"pg": 29480, "web": 29481, "smtp": 29482}
DBNAME = "chaos"
NODES = 3
KV_THREADS = 6  # a KV write is several statements: one thread alone falls behind
# The drain goes on while what is left goes down; rows or messages that do
# not move for STUCK_AFTER seconds (past the run's lease, 6 s, and its
# longest back-off, 2 s, many times over) are stuck.
STUCK_AFTER = 60
MAX_DRAIN = 1800

# Short leases and quick retries, so faults are recovered from (and the
# designed failures dead-lettered) within the run; the default five attempts.
NODE_ENV = {
    "PICLOUD_EXTRA_APPS": "topology.chaos",
    "PICLOUD_QCLUSTER_WORKERS": "2",
    # The run's handlers each write a ledger row: plain handlers that wait on
    # the database, so more threads than the default two keep up.
    "PICLOUD_DISPATCHER_HANDLER_THREADS": "8",
    "PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS": "200",
    "PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS": "2000",
    "PICLOUD_TRIGGER_RETRY_JITTER": "0",
    "PICLOUD_SANDBOX_TIMEOUT_MS": "5000",
    "PICLOUD_DISPATCHER_LEASE_MARGIN_MS": "1000",
    "PICLOUD_DISPATCHER_SHUTDOWN_GRACE_MS": "5000",
    "PICLOUD_STOP_GRACE_MS": "12000",
    # The designed failures would open their script's circuit, which then
    # holds its rows for a cool-down (the breaker has tests of its own); this
    # run counts deliveries, so the circuit stays closed.
    "PICLOUD_CIRCUIT_FAILURE_THRESHOLD": "10000",
    "PICLOUD_SMTP_ADDR": f"127.0.0.1:{PORTS['smtp']}",
    "PICLOUD_LOG_LEVEL": "INFO",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m topology.chaos", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=300, help="how long producers and faults run"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=100,
        help="KV writes per second; publishes at a fifth of it, queue messages at twice it",
    )
    parser.add_argument("--fault-every", type=float, default=10, help="seconds between faults")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument(
        "--min-events", type=int, default=0, help="fail unless this many were produced"
    )
    parser.add_argument("--doc", type=Path, help="write the ledger as this Markdown file")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, data)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    root = Path(tempfile.mkdtemp(prefix="picloud-chaos-"))
    os.chmod(root, 0o755)  # the server may run as another OS user
    logs = root / "logs"
    logs.mkdir()
    cluster = PgCluster(root / "pg", PORTS["pg"]).init(fsync="on", synchronous_commit="on").start()
    try:
        return _run(args, cluster, logs)
    finally:
        cluster.stop("immediate")
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)
        else:
            print(f"chaos: kept {root}")


def _run(args, cluster: PgCluster, logs: Path) -> int:
    cluster.createdb(DBNAME)
    env = {
        **os.environ,
        **NODE_ENV,
        "DATABASE_URL": cluster.url(DBNAME),
        "PICLOUD_DATABASE_ANNOUNCED": "1",
    }
    os.environ.update(
        {k: env[k] for k in ("DATABASE_URL", "PICLOUD_EXTRA_APPS", "PICLOUD_DATABASE_ANNOUNCED")}
    )
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=PROJECT_DIR,
        env=env,
        check=True,
    )
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "picloud.settings")
    import django

    django.setup()
    from django.db import connection

    from . import faults as fault_mod
    from . import workload

    tenant = workload.set_up()
    procs = [web(env, logs, f"127.0.0.1:{PORTS['web']}").start(), smtp(env, logs).start()]
    nodes = fault_mod.Nodes(lambda n: Node(n, env, logs))
    try:
        return _drill(args, cluster, tenant, procs, nodes, connection)
    finally:
        for proc in [*nodes.running, *procs]:
            proc.kill9()


def _drill(args, cluster, tenant, procs, nodes, connection) -> int:
    from picloud.config import EmailConfig

    from . import faults as fault_mod
    from . import report, workload

    for _ in range(NODES):
        nodes.add()
    _wait(lambda: all(n.ready() for n in nodes.running), 90, "the nodes to listen")
    _wait(lambda: _port_open(PORTS["web"]) and _port_open(PORTS["smtp"]), 60, "web and SMTP")

    stop = threading.Event()
    rate = args.rate
    producers = [
        *[workload.KvProducer(tenant, rate / KV_THREADS, stop) for _ in range(KV_THREADS)],
        # Publishes (two deliveries each) and queue messages (run in batches).
        workload.PubsubProducer(tenant, rate / 5, stop),
        workload.QueueProducer(tenant, rate * 2, stop),
        workload.MailProducer("127.0.0.1", PORTS["smtp"], EmailConfig.current().domain, 4, stop),
        workload.InvokeProducer("127.0.0.1", PORTS["web"], tenant.token, 4, stop),
        workload.InvokeProducer("127.0.0.1", PORTS["web"], tenant.token, 4, stop),
    ]
    plan = fault_mod.schedule(args.seconds, args.fault_every, args.seed)
    fault_stop = threading.Event()
    faults = fault_mod.Faults(plan, nodes, cluster, DBNAME, args.seed, fault_stop)
    started = datetime.now(UTC)
    for thread in [*producers, faults]:
        thread.start()
    stop.wait(args.seconds - min(5.0, args.seconds / 4))
    # Connections each process group holds, under load (for sizing).
    held = {p.name: p.db_connections(PORTS["pg"]) for p in [*nodes.running, *procs]}
    stop.wait(min(5.0, args.seconds / 4))
    stop.set()
    for producer in producers:
        producer.join(60)
    fault_stop.set()
    faults.join(120)
    produced_until = datetime.now(UTC)

    def settled() -> bool:
        faults.supervise()
        while len(nodes.running) < NODES:
            nodes.add()
        return all(n.ready() for n in nodes.running)

    _wait(settled, 90, "the nodes to listen")

    connection.close()  # the faults ended it
    paused_at = workload.pause_cron(tenant)
    drained = _drain(connection, STUCK_AFTER)
    ledger, facts = report.collect(connection, tenant, producers, faults, paused_at)
    facts["database_connections"] = held
    ledger_text = report.render(
        ledger,
        facts,
        faults=faults,
        args=args,
        started=started,
        produced_until=produced_until,
        drained=drained,
        machine=_machine(),
    )
    print(ledger_text)
    if args.doc:
        args.doc.write_text(ledger_text)
    for proc in [*nodes.running, *procs]:
        proc.terminate(30)
    nodes.running.clear()
    problems = []
    if not ledger.ok:
        problems.append("the ledger is not clean")
    if ledger.produced < args.min_events:
        problems.append(f"{ledger.produced} events produced, fewer than {args.min_events}")
    if faults.errors:
        problems.append(f"faults that failed: {faults.errors}")
    for problem in problems:
        print(f"chaos: FAILED: {problem}")
    print(json.dumps({"ok": not problems, **facts}, default=str))
    return 1 if problems else 0


def _drain(connection, still_for: float) -> float | None:
    """Seconds until no outbox row and no queue message is left; None when
    what is left stopped going down for `still_for` seconds (stuck: longer
    than any lease and back-off of the run), or after MAX_DRAIN."""
    started = last_said = last_moved = time.monotonic()
    least = None
    while time.monotonic() - started < MAX_DRAIN:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT source_kind, count(*), min(due_at) - now() FROM outbox GROUP BY 1"
                " UNION ALL SELECT 'queue message', count(*), NULL FROM queue_messages"
            )
            left = [row for row in cursor.fetchall() if row[1]]
        total = sum(n for _, n, _ in left)
        if not total:
            return time.monotonic() - started
        if least is None or total < least:
            least, last_moved = total, time.monotonic()
        elif time.monotonic() - last_moved > still_for:
            return None
        if time.monotonic() - last_said > 10:
            last_said = time.monotonic()
            logger.info("draining: %s", ", ".join(f"{k} {n}" for k, n, _ in left))
        time.sleep(0.5)
    return None


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"chaos: timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _machine() -> str:
    cores = os.cpu_count()
    return f"{platform.machine()}, {cores} cores, Python {platform.python_version()}, PostgreSQL 15"
