"""The chaos run's faults, on a schedule: kill -9 of a worker and of a
whole node, SIGTERM of a node, a node added mid-drain, every session
terminated, and fast and immediate database restarts. Each is logged with
its time and the processes it ended, for the ledger to explain duplicates."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import psycopg

from .ledger import Fault
from .stack import Node

logger = logging.getLogger("chaos")

KINDS = (
    "kill9_worker",
    "terminate_sessions",
    "kill9_node",
    "add_node",
    "pg_restart_fast",
    "sigterm_node",
    "pg_restart_immediate",
)
MIN_NODES, MAX_NODES = 2, 4


class Nodes:
    """The running `qcluster` nodes; new ones numbered on."""

    def __init__(self, make: Callable[[int], Node]) -> None:
        self.make, self.running, self.started = make, [], 0

    def add(self) -> Node:
        self.started += 1
        node = self.make(self.started).start()
        self.running.append(node)
        return node

    def pick(self, rng: random.Random) -> Node:
        return rng.choice(self.running)

    def replace_exited(self) -> list[str]:
        """Start a node for each that exited on its own (as a supervisor such
        as systemd would); say which."""
        said = []
        for node in [n for n in self.running if not n.alive()]:
            self.running.remove(node)
            new = self.add()
            said.append(f"{node.name} exited ({node.proc.returncode}); {new.name} started")
        return said

    def remove(self, node: Node) -> None:
        self.running.remove(node)


class Faults(threading.Thread):
    """Runs `schedule` (seconds from start, kind) until it ends or `stop` is set."""

    def __init__(self, schedule, nodes: Nodes, cluster, dbname: str, seed: int, stop) -> None:
        super().__init__(name="chaos-faults", daemon=True)
        self.schedule, self.nodes, self.cluster, self.dbname = schedule, nodes, cluster, dbname
        self.rng, self.stop, self.log = random.Random(seed), stop, []
        self.errors: list[str] = []
        self.restarts: list[tuple[datetime, str]] = []  # nodes that exited on their own

    def run(self) -> None:
        started = datetime.now(UTC).timestamp()
        for offset, kind in self.schedule:
            while (wait := started + offset - datetime.now(UTC).timestamp()) > 0:
                if self.stop.wait(min(wait, 1.0)):
                    return
                self.supervise()
            try:
                self.log.append(getattr(self, kind)())
                logger.info("fault: %s", self.log[-1].detail)
            except Exception as exc:  # a fault that failed is reported, the run goes on
                self.errors.append(f"{kind}: {exc!r}")
                logger.exception("fault %s failed", kind)

    def supervise(self) -> None:
        for said in self.nodes.replace_exited():
            self.restarts.append((datetime.now(UTC), said))
            logger.info("supervisor: %s", said)

    def _fault(self, kind, detail, pids=(), db_wide=False, at=None) -> Fault:
        return Fault(at or datetime.now(UTC), kind, detail, frozenset(pids), db_wide)

    def kill9_worker(self) -> Fault:
        node = self.nodes.pick(self.rng)
        workers = node.worker_pids()
        if not workers:
            return self._fault("kill9_worker", f"{node.name} had no worker to kill")
        pid = self.rng.choice(workers)
        # A process killed inside a node can take the node down with it
        # (django-q2's sentinel, or a lock the dead process held:
        # docs/dispatcher.md), so the whole node is in the fault's reach.
        reach = node.pids()
        at = datetime.now(UTC)
        os.kill(pid, signal.SIGKILL)
        return self._fault("kill9_worker", f"kill -9 of process {pid} of {node.name}", reach, at=at)

    def kill9_node(self) -> Fault:
        node = self.nodes.pick(self.rng)
        at = datetime.now(UTC)
        pids = node.kill9()
        self.nodes.remove(node)
        new = self.nodes.add()
        return self._fault(
            "kill9_node",
            f"kill -9 of {node.name} ({len(pids)} processes); {new.name} started",
            pids,
            at=at,
        )

    def sigterm_node(self) -> Fault:
        node = self.nodes.pick(self.rng)
        at = datetime.now(UTC)
        # Stopping takes a while (rows in flight finish): replace it at once.
        new = self.nodes.add() if len(self.nodes.running) <= MIN_NODES + 1 else None
        pids = node.terminate()
        self.nodes.remove(node)
        # A stop that had to kill is a kill: its processes explain duplicates.
        detail = f"SIGTERM of {node.name}" + (f"; {new.name} started" if new else "")
        return self._fault("sigterm_node", detail, pids, at=at)

    def add_node(self) -> Fault:
        if len(self.nodes.running) >= MAX_NODES:
            victim = self.nodes.running[0]
            victim.terminate()
            self.nodes.remove(victim)
        new = self.nodes.add()
        return self._fault("add_node", f"{new.name} added ({len(self.nodes.running)} running)")

    def terminate_sessions(self) -> Fault:
        at = datetime.now(UTC)
        with psycopg.connect(self.cluster.url(self.dbname), autocommit=True) as conn:
            ended = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchone()[0]
        return self._fault(
            "terminate_sessions", f"pg_terminate_backend of {ended} sessions", db_wide=True, at=at
        )

    def pg_restart_fast(self) -> Fault:
        at = datetime.now(UTC)
        self.cluster.restart("fast")
        return self._fault("pg_restart_fast", "PostgreSQL restarted (fast)", db_wide=True, at=at)

    def pg_restart_immediate(self) -> Fault:
        at = datetime.now(UTC)
        self.cluster.restart("immediate")
        return self._fault(
            "pg_restart_immediate",
            "PostgreSQL restarted (immediate: crash recovery)",
            db_wide=True,
            at=at,
        )


def schedule(seconds: float, every: float, seed: int) -> list[tuple[float, str]]:
    """Faults every `every` seconds from `every` on, ending `every` before the
    production stops; the kinds in turn, each round in a new order."""
    rng, plan, at, kinds = random.Random(seed), [], every, []
    while at <= seconds - every / 2:
        if not kinds:
            kinds = list(KINDS)
            rng.shuffle(kinds)
        plan.append((at, kinds.pop()))
        at += every
    return plan
