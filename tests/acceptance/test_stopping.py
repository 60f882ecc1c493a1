"""`qcluster` and `runstack` stop completely, within their grace, however signalled.

Each test starts the real command in its own session, optionally kills the
cluster's worker with SIGKILL, signals one way, and checks that every process
that was running beforehand is gone within the grace (plus a little), none of
them left re-parented to PID 1, and that what had to be killed is reported.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from django.db import connection

from picloud.stopping import process_group, running
from tests.acceptance.cluster import ACCEPTANCE_ENV
from tests.helpers import PROJECT_DIR, free_port, subprocess_env, wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

GRACE = 2.5  # seconds: PICLOUD_STOP_GRACE_MS below
SLACK = 2.0  # seconds beyond a grace for killing, reporting and exiting
RUNSTACK_KILL_MARGIN = 3.0  # seconds: runstack.KILL_MARGIN
STOP_ENV = {
    **ACCEPTANCE_ENV,
    # One worker: idle, it waits on django-q2's task queue holding the
    # queue's lock, so killing it wedges its replacement — the hard case.
    "PICLOUD_QCLUSTER_WORKERS": "1",
    "PICLOUD_DISPATCHER_SHUTDOWN_GRACE_MS": "500",
    "PICLOUD_STOP_GRACE_MS": str(int(GRACE * 1000)),
}
KILLED_REPORT = "killed with SIGKILL"


class Stack:
    """One `manage.py <command>` in its own session, logging to a file."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", *argv],
                cwd=PROJECT_DIR,
                # Its own SMTP port: runstack's receiver must not meet another's.
                env=subprocess_env(
                    connection.settings_dict,
                    **STOP_ENV,
                    PICLOUD_SMTP_ADDR=f"127.0.0.1:{free_port()}",
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its group is its own; pytest's is not touched
            )
        self.tracked: list[psutil.Process] = []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_running(self, *, listening: int = 1, web: bool = False) -> None:
        def ready():
            text = self.log()
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{text}")
            return text.count("listening for outbox rows") >= listening and (
                not web or ("Booting worker" in text and "SMTP receiver on" in text)
            )

        wait_for(ready, timeout=60, what=f"the cluster's dispatcher (log: {self.log_path})")

    def kill_worker(self) -> int:
        """SIGKILL the cluster's worker; wait until django-q2 has replaced it."""
        pid = int(re.search(r"ready for work at (\d+)", self.log()).group(1))
        os.kill(pid, signal.SIGKILL)
        self.wait_running(listening=2)
        assert "reincarnated worker" in self.log()
        return pid

    def track(self) -> list[psutil.Process]:
        """Every process running under the command now, to check on later."""
        self.tracked = [psutil.Process(self.proc.pid), *self.descendants()]
        return self.tracked

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def cleanup(self) -> None:
        for proc in [*running(self.tracked), *process_group(self.proc.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def start(tmp_path):
    stacks: list[Stack] = []

    def start(*argv: str) -> Stack:
        stack = Stack(list(argv), tmp_path / f"{argv[0]}-{len(stacks)}.log")
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        stack.cleanup()


def _signal(stack: Stack, how: str) -> None:
    if how == "SIGTERM":
        stack.proc.send_signal(signal.SIGTERM)
    elif how == "SIGINT":
        stack.proc.send_signal(signal.SIGINT)
    elif how == "group SIGTERM":  # kill -- -PGID
        os.killpg(stack.proc.pid, signal.SIGTERM)
    elif how == "every process SIGTERM":  # systemd's KillMode=control-group
        for proc in running(stack.tracked):
            proc.send_signal(signal.SIGTERM)
    else:
        raise ValueError(how)


def _stop_each(stacks: dict[str, Stack], *, within: float) -> dict[str, int]:
    """Signal each stack its way (the key); assert that each, and every process it
    ran, is gone `within` seconds of its signal; return each one's exit status."""
    signalled = {}
    for how, stack in stacks.items():
        stack.track()
        signalled[how] = time.monotonic()
        _signal(stack, how)
    codes = {}
    for how, stack in stacks.items():
        deadline = signalled[how] + within
        try:
            codes[how] = stack.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"still running {within:g} s after {how}:\n{stack.log()[-3000:]}"
            ) from None
        wait_for(
            lambda s=stack: not running(s.tracked) and not process_group(s.proc.pid),
            timeout=max(0.1, deadline - time.monotonic()),
            what=f"every process to go after {how} (left: {running(stack.tracked)})",
        )
    return codes


SIGNALS = ["SIGTERM", "SIGINT", "group SIGTERM"]
# runstack's children lead their own groups; systemd's default signals them all.
RUNSTACK_SIGNALS = [*SIGNALS, "every process SIGTERM"]


def _report(log: str) -> str:
    return next((line for line in log.splitlines() if KILLED_REPORT in line), "")


@pytest.mark.parametrize("how", SIGNALS)
def test_qcluster_stops_in_order(start, how):
    cluster = start("qcluster")
    cluster.wait_running()
    code = _stop_each({how: cluster}, within=GRACE + SLACK)[how]
    log = cluster.log()
    assert code == 0, log
    assert "has stopped" in log and "dispatcher stopped" in log, log
    assert KILLED_REPORT not in log, log


def test_qcluster_signalled_while_starting_stops_completely(start):
    cluster = start("qcluster")
    wait_for(lambda: "starting." in cluster.log(), timeout=60, what="the cluster starting")
    codes = _stop_each({"SIGTERM": cluster}, within=GRACE + SLACK)
    assert codes["SIGTERM"] == 0, cluster.log()
    assert "has stopped" in cluster.log()


def test_qcluster_after_a_worker_was_killed_kills_the_rest_and_says_so(start):
    # One cluster per way of signalling, side by side: each waits out its grace.
    clusters = {how: start("qcluster") for how in SIGNALS}
    for cluster in clusters.values():
        cluster.wait_running()
    sentinels = {}
    for how, cluster in clusters.items():
        cluster.kill_worker()
        sentinels[how] = psutil.Process(cluster.proc.pid).children()[0].pid
    codes = _stop_each(clusters, within=GRACE + SLACK)
    for how, cluster in clusters.items():
        log = cluster.log()
        assert codes[how] == 1, (how, log)
        report = _report(log)
        name = "SIGINT" if how == "SIGINT" else "SIGTERM"
        assert f"qcluster: still running {GRACE:g} s after {name}" in report, (how, log)
        assert f"{sentinels[how]} (" in report, (how, report)


def test_qcluster_whose_sentinel_dies_kills_its_workers_and_exits_1(start):
    cluster = start("qcluster")
    cluster.wait_running()
    tracked = cluster.track()
    sentinel = psutil.Process(cluster.proc.pid).children()[0]
    sentinel.kill()
    assert cluster.proc.wait(timeout=SLACK + 1) == 1
    # The command waits for what it killed before it exits; the slack covers a loaded machine.
    wait_for(lambda: not running(tracked), timeout=SLACK, what="the sentinel's children to go")
    assert f"the sentinel (pid {sentinel.pid}) exited with code -9" in cluster.log()


def _runstack(start) -> Stack:
    return start("runstack", "--addr", f"127.0.0.1:{free_port()}", "--threads", "4")


@pytest.mark.parametrize("how", RUNSTACK_SIGNALS)
def test_runstack_stops_in_order(start, how):
    stack = _runstack(start)
    stack.wait_running(web=True)
    code = _stop_each({how: stack}, within=GRACE + SLACK)[how]
    log = stack.log()
    assert code == 0, log
    assert "has stopped" in log, log
    assert KILLED_REPORT not in log, log


def test_runstack_after_a_worker_was_killed_stops_everything_and_says_so(start):
    stacks = {how: _runstack(start) for how in RUNSTACK_SIGNALS}
    for stack in stacks.values():
        stack.wait_running(web=True)
    for stack in stacks.values():
        stack.kill_worker()
    codes = _stop_each(stacks, within=GRACE + SLACK)
    for how, stack in stacks.items():
        log = stack.log()
        assert codes[how] == 1, (how, log)
        assert "qcluster: still running" in _report(log), (how, log)
        assert "cluster exited with status 1 while stopping" in log, (how, log)


def test_runstack_kills_the_group_of_a_cluster_that_cannot_stop_itself(start):
    stack = _runstack(start)
    stack.wait_running(web=True)
    cluster_main = next(p for p in stack.descendants() if "qcluster" in p.cmdline())
    cluster_tree = [cluster_main, *cluster_main.children(recursive=True)]
    cluster_main.suspend()  # a wedged main process: it will never stop the rest
    within = GRACE + RUNSTACK_KILL_MARGIN + SLACK
    assert _stop_each({"SIGTERM": stack}, within=within)["SIGTERM"] == 1
    report = _report(stack.log())
    assert f"cluster still running {GRACE + RUNSTACK_KILL_MARGIN:g} s after SIGTERM" in report
    for proc in cluster_tree:
        assert f"{proc.pid} (" in report, report
