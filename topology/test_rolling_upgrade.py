"""Drill: a rolling upgrade from the previous release, with real processes.

The previous release (PREVIOUS_RELEASE, exported with ``git archive``) is
migrated into a scratch database, and a node of it (``manage.py qcluster``)
dispatches while producers of that release write events. Then this
checkout's ``manage.py migrate`` runs while the old node keeps dispatching,
a node of this checkout starts beside it, the old node is stopped with
SIGTERM, and the old release's producers write once more (web nodes are
still old while dispatchers roll). Every event the old release wrote must
run exactly once, nothing may be left in the outbox or the queue, and the
new node must run rows the old release wrote. docs/operations.md,
"Rolling upgrades", gives the rules this checks.

Run by ``make upgrade-drill`` (a minute or two), not by plain ``pytest``.
The scratch database is made on the server of DATABASE_URL (or the
embedded PostgreSQL) and dropped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from psycopg import sql

from picloud.db.pgconn import database_url
from tests.helpers import PROJECT_DIR, wait_for

PREVIOUS_RELEASE = "544dfec"
# What this checkout's migrate must apply on top of the previous release:
# new functions beside the released ones, and a released function replaced
# by a compatible one (safe while old nodes run).
EXPECTED_PLAN = {
    "outbox.0013_settle_claimed_attempt",
    "triggers.0007_queue_settle_claimed",
    "triggers.0008_cron_drop_ahead_only",
}
APP_PACKAGE = "upgrade_drill"  # the drill's app, as both releases import it
NODE_ENV = {
    "PICLOUD_EXTRA_APPS": APP_PACKAGE,
    "PICLOUD_QCLUSTER_WORKERS": "1",  # one dispatcher per node: two nodes share 2 cores
    "PICLOUD_TRIGGER_RETRY_JITTER": "0",
    # The flaky handler fails every first attempt: in a row, those failures
    # open its script's circuit, which then holds its rows for a cool-down
    # that doubles with each failed probe (the breaker's own tests cover
    # that). The drill is about the upgrade, so the circuit stays closed.
    "PICLOUD_CIRCUIT_FAILURE_THRESHOLD": "10000",
    "PICLOUD_SANDBOX_TIMEOUT_MS": "5000",
    "PICLOUD_DISPATCHER_LEASE_MARGIN_MS": "1000",
    "PICLOUD_LOG_LEVEL": "INFO",
    "PICLOUD_DATABASE_ANNOUNCED": "",
}
# What a node's log must never hold.
TROUBLE = ("Traceback", "ERROR", "CRITICAL", "could not settle", "will run again")
LIVE_EVENTS_BEFORE_MIGRATE = 40  # executed by the old node before the migration starts
AFTER_BURST = 40  # events the old release writes once the old node is gone
DRAIN_TIMEOUT = 120  # seconds for everything to run once written


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The previous release, exported, and the drill's app beside it."""
    root = tmp_path_factory.mktemp("upgrade")
    old = root / "old"
    old.mkdir()
    archive = subprocess.run(
        ["git", "archive", PREVIOUS_RELEASE],
        cwd=PROJECT_DIR,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    # Both releases import the same handlers: a copy outside either tree.
    shutil.copytree(
        Path(__file__).parent / "upgrade_app",
        root / "apps" / APP_PACKAGE,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return root


@pytest.fixture(scope="module")
def database_url_(work) -> str:
    """A scratch database on the configured server, dropped at the end."""
    base = settings.DATABASES["default"]
    name = f"{base['NAME']}_upgrade_drill"
    admin_url = database_url(base, name="postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield database_url(base, name=name)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


class Release:
    """One release's code: run its manage.py and its producers."""

    def __init__(self, name: str, directory: Path, work: Path, url: str) -> None:
        self.name, self.directory, self.work = name, directory, work
        self.env = {
            **os.environ,
            **NODE_ENV,
            "DATABASE_URL": url,
            "DRILL_NODE": name,
            "PYTHONPATH": str(work / "apps"),
            "DJANGO_SETTINGS_MODULE": "picloud.settings",
        }

    def run(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"{self.name}: {args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def manage(self, *args: str) -> str:
        return self.run("manage.py", *args)

    def produce(self, *args: str) -> str:
        return self.run("-m", f"{APP_PACKAGE}.producer", *args)

    def spawn(self, args: list[str], log: Path) -> subprocess.Popen:
        with log.open("a") as out:
            return subprocess.Popen(
                [sys.executable, *args],
                cwd=self.directory,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our signals reach it, not pytest
            )


class Node:
    """A `manage.py qcluster` of one release."""

    def __init__(self, release: Release) -> None:
        self.release = release
        self.log_path = release.work / f"qcluster-{release.name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Node:
        self.proc = self.release.spawn(["manage.py", "qcluster"], self.log_path)
        wait_for(
            lambda: "listening for outbox rows" in self.log() or self.proc.poll() is not None,
            timeout=60,
            what=f"the {self.release.name} node to listen (log: {self.log_path})",
        )
        assert self.proc.poll() is None, f"the {self.release.name} node died:\n{self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as an orchestrator stops a node it replaces; its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"the {self.release.name} node ignored SIGTERM") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def trouble(self) -> list[str]:
        return [line for line in self.log().splitlines() if any(t in line for t in TROUBLE)]


class Database:
    """What the drill reads of the scratch database."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _all(self, query: str) -> list[tuple]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(query).fetchall()

    def runs(self) -> dict[str, tuple[int, dict]]:
        """{event id: (executions, the last execution's record)}."""
        rows = self._all(
            "SELECT key, version, value FROM kv_entries "
            "WHERE collection = 'runs' AND app_id = (SELECT id FROM apps WHERE slug = 'drill')"
        )
        return {key: (version, value) for key, version, value in rows}

    def count(self, table: str) -> int:
        return self._all(f"SELECT count(*) FROM {table}")[0][0]  # the drill's own table names

    def repeated_log_entries(self) -> list[tuple]:
        return self._all(
            "SELECT outbox_id, attempt, count(*) FROM delivery_log "
            "GROUP BY 1, 2 HAVING count(*) > 1"
        )

    def functions(self) -> set[str]:
        return {r[0] for r in self._all("SELECT proname FROM pg_proc")}


def _ran_by(runs: dict, node: str, since: float = 0.0, until: float = float("inf")) -> int:
    return sum(1 for _, r in runs.values() if r["node"] == node and since <= r["at"] < until)


def _ids(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_a_rolling_upgrade_from_the_previous_release_loses_and_repeats_nothing(work, database_url_):
    db = Database(database_url_)
    old = Release("old", work / "old", work, database_url_)
    new = Release("new", PROJECT_DIR, work, database_url_)
    old.manage("migrate", "--noinput")
    old.produce("setup")
    written = json.loads(old.produce("burst", "before", "40"))

    old_node, new_node = Node(old), Node(new)
    live_ids, stop_file = work / "live.ids", work / "live.stop"
    producer = None
    try:
        old_node.start()
        producer = old.spawn(
            ["-m", f"{APP_PACKAGE}.producer", "live", "live", str(stop_file), str(live_ids)],
            work / "producer.log",
        )
        wait_for(
            lambda: _ran_by(db.runs(), "old") >= LIVE_EVENTS_BEFORE_MIGRATE,
            timeout=60,
            what="the old node to run the first events",
        )

        # The plan: only this release's new migrations, which add functions.
        plan = new.manage("migrate", "--plan")
        planned = {line for line in plan.splitlines() if "." in line and not line[:1].isspace()}
        assert planned == EXPECTED_PLAN, f"unexpected migrate --plan:\n{plan}"

        migrate_started = time.time()
        new.manage("migrate", "--noinput")
        migrate_ended = time.time()
        assert {"outbox_reschedule_claimed", "queue_settle_claimed"} <= db.functions()

        during = _ran_by(db.runs(), "old", migrate_started, migrate_ended)
        assert during > 0, "the old node ran events while the migration ran"
        wait_for(
            lambda: _ran_by(db.runs(), "old", since=migrate_ended) >= 20,
            timeout=60,
            what="the old node to keep running events after the migration",
        )
        assert producer.poll() is None, "the old release's producer kept writing"

        new_node.start()
        wait_for(
            lambda: _ran_by(db.runs(), "new") >= 10,
            timeout=60,
            what="the new node to run events beside the old one",
        )
        assert old_node.stop() == 0, f"the old node's exit on SIGTERM:\n{old_node.log()[-3000:]}"
        old_stopped = time.time()

        stop_file.touch()
        assert producer.wait(60) == 0, (work / "producer.log").read_text()
        # The web nodes are still of the old release while dispatchers roll.
        after = old.produce("burst", "after", str(AFTER_BURST))
        after_ids = json.loads(after)
        written += _ids(live_ids) + after_ids

        def drained():
            runs = db.runs()
            left = db.count("outbox") + db.count("queue_messages")
            return not left and all(i in runs for i in written)

        try:
            wait_for(drained, timeout=DRAIN_TIMEOUT, what="every event written to run")
        except AssertionError:
            runs = db.runs()
            missing = [i for i in written if i not in runs]
            raise AssertionError(
                f"{len(missing)} of {len(written)} events never ran ({missing[:10]}); "
                f"outbox {db.count('outbox')}, queue {db.count('queue_messages')}"
            ) from None
        runs = db.runs()
        assert new_node.stop() == 0, f"the new node's exit:\n{new_node.log()[-3000:]}"
    finally:
        stop_file.touch()
        if producer is not None and producer.poll() is None:
            os.killpg(producer.pid, signal.SIGKILL)
            producer.wait()
        old_node.kill()
        new_node.kill()

    repeated = {i: n for i, (n, _) in runs.items() if n != 1}
    assert not repeated, f"events executed more than once: {repeated}"
    assert set(runs) == set(written), "every record is of an event the producers wrote"
    assert db.count("dead_letters") == 0, "no event ended as a dead letter"
    assert db.repeated_log_entries() == [], "each attempt logged once"
    assert all(runs[i][1]["node"] == "new" for i in after_ids), (
        "what the old release wrote after the old node stopped ran on the new node"
    )
    by_new_before_stop = [
        i for i in written if runs[i][1]["node"] == "new" and runs[i][1]["written_at"] < old_stopped
    ]
    assert by_new_before_stop, "the new node ran events written while the old node ran"
    assert old_node.trouble() == [], f"the old node's log: {old_node.trouble()[:5]}"
    assert new_node.trouble() == [], f"the new node's log: {new_node.trouble()[:5]}"

    summary = {
        "events": len(written),
        "old node": _ran_by(runs, "old"),
        "new node": _ran_by(runs, "new"),
        "old node during migrate": during,
        "migrate seconds": round(migrate_ended - migrate_started, 2),
        "new node, written before the old node stopped": len(by_new_before_stop),
        "flaky retries of those": sum(1 for i in by_new_before_stop if i.startswith("flaky:")),
    }
    print(f"\nrolling upgrade drill: {summary}")
