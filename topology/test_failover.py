"""Failover drill: a primary and a synchronous streaming standby, PiCloud on a
multi-host DATABASE_URL (target_session_attrs=read-write). Events are written
continuously; mid-drain the primary's host dies (SIGKILL) and the standby is
promoted. Nothing whose commit returned may be lost, dispatch must resume
within 10 s of the promotion, and the web server, both qcluster nodes and
their LISTEN connections must carry on without a restart.

    make failover    (= pytest -p no:django -s topology/test_failover.py)

Django runs only in the child processes: the drill itself speaks to the
clusters with psycopg, so it needs no test database.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.helpers import PROJECT_DIR, free_port, wait_for
from topology.pgcluster import PgCluster, multi_host_url

PORTS = range(55400, 55420)  # the drill's private clusters listen here
DBNAME = "picloud"
# Between the primary's death and the promotion: the time a failover manager
# (Patroni, a managed service) takes to decide. Clients see the outage meanwhile.
OUTAGE = 2.0  # seconds
RESUME_WITHIN = 10.0  # seconds from the promotion to the first execution
WRITE_AFTER = 8.0  # seconds the writer goes on after the promotion
DRAIN_WITHIN = 120.0  # seconds for every committed event to be executed afterwards

CHILD_ENV = {
    "PICLOUD_EXTRA_APPS": "topology",
    "PICLOUD_QCLUSTER_WORKERS": "1",  # two nodes of one worker: two dispatchers
    "PICLOUD_LOG_LEVEL": "INFO",
    "PICLOUD_DATABASE_ANNOUNCED": "",
    "DJANGO_DEBUG": "false",
    "PYTHONUNBUFFERED": "1",
}


GUNICORN = [sys.executable, "-m", "gunicorn", "picloud.wsgi:application"]
GUNICORN += ["--worker-class", "gthread", "--workers", "1", "--threads", "8"]  # as runstack


class Proc:
    """A child in a session of its own (our signals stay ours), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict, logs: Path) -> None:
        self.name, self.log_path = name, logs / f"{name}.log"
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=PROJECT_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> set[int]:
        """The processes that serve: gunicorn's master and worker; qcluster's
        main process and the workers that host the dispatchers. (django-q2's
        pusher exits by design when its broker query fails, and its sentinel
        starts another: it carries no dispatch and is left out.)"""
        root = psutil.Process(self.proc.pid)
        if self.name.startswith("qcluster"):
            workers = {int(pid) for pid in re.findall(r"ready for work at (\d+)", self.log())}
            return {root.pid, *(pid for pid in workers if psutil.pid_exists(pid))}
        return {root.pid, *(child.pid for child in root.children(recursive=True))}

    def stop(self, timeout: float = 40) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        # Whatever is left of its group (a stuck child) goes with SIGKILL.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _free_ports(n: int) -> list[int]:
    found = []
    for port in PORTS:
        if len(found) == n:
            break
        try:
            with socket.create_server(("127.0.0.1", port)):
                found.append(port)
        except OSError:
            continue
    assert len(found) == n, f"no {n} free ports in {PORTS}"
    return found


def _manage(env: dict, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _http(url: str, *, data: bytes | None = None, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _committed(path: Path) -> dict[str, float]:
    """uid -> when its commit returned, for every line the writer finished."""
    lines = path.read_text().splitlines() if path.exists() else []
    return {uid: float(at) for uid, at in (line.split() for line in lines if " " in line)}


def _runs(cluster: PgCluster) -> list[tuple[str, float]]:
    """(uid, when it ran) per execution, duplicates included."""
    rows = cluster.sql(
        "SELECT value->>'uid', (value->>'at')::float8 FROM kv_entries WHERE collection = 'runs'",
        dbname=DBNAME,
    )
    return [(uid, at) for uid, at in rows]


def _listening(cluster: PgCluster) -> list[str]:
    """The last LISTEN of each session that listens (pg_stat_activity keeps
    an idle session's last statement)."""
    rows = cluster.sql(
        "SELECT query FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN %%'",
        (DBNAME,),
    )
    return sorted(query for (query,) in rows)


def _outbox_rows(cluster: PgCluster) -> int:
    return cluster.sql("SELECT count(*) FROM outbox", dbname=DBNAME)[0][0]


@pytest.fixture
def workdir():
    # Not pytest's tmp_path: as root the servers run as the postgres user,
    # which must be able to enter every directory above its own.
    path = Path(tempfile.mkdtemp(prefix="picloud-failover-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    print(f"\nfailover drill: logs and data in {path}")


def test_failover_to_a_synchronous_standby_loses_nothing_and_resumes(workdir, capsys):
    primary_port, standby_port = _free_ports(2)
    procs: list[Proc] = []
    stop_writing = workdir / "stop-writing"
    with PgCluster(workdir / "primary", primary_port) as primary:
        # Commits wait for the standby's flush once it is named synchronous.
        # fsync off: the drill kills processes, not the machine, so the OS
        # keeps every write; a shared disk's flush latency stays out of the
        # figures. A commit still returns only once the standby has the WAL.
        primary.init(synchronous_commit="on", fsync="off").start()
        primary.createdb(DBNAME)
        with primary.standby(workdir / "standby", standby_port, synchronous=True) as standby:
            url = multi_host_url([primary, standby], DBNAME)
            env = {**os.environ, **CHILD_ENV, "DATABASE_URL": url}
            try:
                _drill(primary, standby, env, workdir, procs, stop_writing, capsys)
            finally:
                stop_writing.touch()
                for proc in procs:
                    proc.stop()
    shutil.rmtree(workdir, ignore_errors=True)  # kept when the drill failed


def _drill(primary, standby, env, workdir, procs, stop_writing, capsys) -> None:
    _manage(env, "manage.py", "migrate", "--noinput")
    tenant = json.loads(_manage(env, "-m", "topology.failover_client", "setup").splitlines()[-1])
    port = free_port()
    web = Proc(
        "web",
        [*GUNICORN, "--bind", f"127.0.0.1:{port}"],
        env,
        workdir,
    )
    nodes = [
        Proc(f"qcluster{i}", [sys.executable, "manage.py", "qcluster"], env, workdir)
        for i in (1, 2)
    ]
    procs += [web, *nodes]
    base = f"http://127.0.0.1:{port}"
    invoke_url = f"{base}/api/apps/{tenant['app']}/scripts/echo/invoke"
    for node in nodes:
        wait_for(
            lambda node=node: "listening for outbox rows" in node.log(),
            timeout=90,
            what=f"{node.name}'s dispatcher listening ({node.log_path})",
        )
    wait_for(lambda: _http(f"{base}/metrics")[0] == 200, timeout=60, what="gunicorn serving")
    # A synchronous invocation starts the web process's reply listener, which
    # must come back on its own after the failover.
    status, body = _http(invoke_url, data=b'{"before": 1}', token=tenant["token"])
    assert (status, json.loads(body or b"null")) == (200, {"before": 1}), body
    listening_before = _listening(primary)
    assert sum("picloud_reply" in q for q in listening_before) == 1, listening_before
    pids_before = {proc.name: proc.pids() for proc in procs}

    committed_path = workdir / "committed.txt"
    writer = Proc(
        "writer",
        [
            sys.executable,
            "-m",
            "topology.failover_client",
            "write",
            str(committed_path),
            str(stop_writing),
        ],
        env,
        workdir,
    )
    procs.append(writer)
    # Mid-drain: events committed, some executed, a backlog still waiting.
    wait_for(
        lambda: len(_runs(primary)) >= 100 and _outbox_rows(primary) >= 50,
        timeout=120,
        what="a drain under way (100 executions done and 50 rows waiting)",
    )
    assert primary.sql("SELECT sync_state FROM pg_stat_replication") == [("sync",)]
    backlog_at_kill = _outbox_rows(primary)
    committed_at_kill = len(_committed(committed_path))

    killed_at = time.time()
    primary.kill9()
    time.sleep(OUTAGE)  # the failover manager's decision time, on purpose
    standby.promote()
    promoted_at = time.time()

    # Writes go on against whichever host accepts them: the new primary.
    wait_for(
        lambda: max(_committed(committed_path).values(), default=0) > promoted_at + WRITE_AFTER,
        timeout=WRITE_AFTER + 60,
        what="the writer committing again after the promotion",
    )
    stop_writing.touch()
    writer.proc.wait(30)
    writer_report = json.loads(writer.log().strip().splitlines()[-1])
    committed = _committed(committed_path)

    def drained():
        runs = _runs(standby)
        return _outbox_rows(standby) == 0 and set(committed) <= {uid for uid, _ in runs} and runs

    runs = wait_for(drained, timeout=DRAIN_WITHIN, what="every committed event executed")
    executed = {uid for uid, _ in runs}
    lost = sorted(set(committed) - executed)
    per_uid = {}
    for uid, _ in runs:
        per_uid[uid] = per_uid.get(uid, 0) + 1
    duplicates = sum(n - 1 for n in per_uid.values())
    dead_letters = standby.sql("SELECT count(*) FROM dead_letters", dbname=DBNAME)[0][0]

    after = sorted(at for _, at in runs if at > promoted_at)
    resumed_in = after[0] - promoted_at
    # The first event written after the promotion, from its commit to its execution.
    new_events = {uid for uid, at in committed.items() if at > promoted_at}
    first_new_ran = min(at for uid, at in runs if uid in new_events)
    new_latency = [
        at - committed[uid] for uid, at in runs if uid in new_events and at > committed[uid]
    ]

    # The same web process answers a page that reads the database and a
    # synchronous invocation (its reply listener reconnected).
    metrics = _http(f"{base}/metrics")
    invoked = _http(invoke_url, data=b'{"after": 1}', token=tenant["token"])
    # Every LISTEN session is back, now on the new primary.
    wait_for(
        lambda: len(_listening(standby)) >= len(listening_before),
        timeout=15,
        what=f"{len(listening_before)} LISTEN sessions on the new primary",
    )
    listening_after = _listening(standby)
    pids_after = {proc.name: proc.pids() for proc in procs if proc is not writer}

    with capsys.disabled():
        print(
            "\nfailover drill (synchronous replication):"
            f"\n  events committed {len(committed)} ({committed_at_kill} before the kill,"
            f" backlog {backlog_at_kill} rows); writes refused during the outage"
            f" {writer_report['failed']}"
            f"\n  executed {len(executed)} distinct, lost {len(lost)}, re-runs {duplicates},"
            f" dead letters {dead_letters}"
            f"\n  outage {promoted_at - killed_at:.1f} s (kill to promotion)"
            f"\n  dispatch resumed {resumed_in:.2f} s after the promotion;"
            f" first event written after it ran {first_new_ran - promoted_at:.2f} s after"
            f" the promotion; commit-to-execution of later events (behind the backlog) p50"
            f" {statistics.median(new_latency) * 1000:.0f} ms,"
            f" max {max(new_latency) * 1000:.0f} ms"
            f"\n  LISTEN sessions before {len(listening_before)}, after {len(listening_after)}"
        )

    assert not lost, f"{len(lost)} committed events never ran, e.g. {lost[:5]}"
    assert dead_letters == 0, f"{dead_letters} events were dead-lettered by the failover"
    assert resumed_in <= RESUME_WITHIN, f"dispatch resumed {resumed_in:.1f} s after the promotion"
    assert first_new_ran - promoted_at <= RESUME_WITHIN
    assert metrics[0] == 200 and b"picloud_dispatcher_dispatched_total" in metrics[1], metrics
    assert (invoked[0], json.loads(invoked[1] or b"null")) == (200, {"after": 1}), invoked
    assert listening_after == listening_before, (listening_before, listening_after)
    for name, pids in pids_after.items():
        assert pids == pids_before[name], f"{name} restarted: {pids_before[name]} -> {pids}"
