"""Stopping: the grace setting, the qcluster override and its django-q2 wiring, and
the helpers that find and kill what is left (on small real processes)."""

import contextlib
import io
import signal
import subprocess
import sys
from unittest import mock

import psutil
import pytest
from django.core.management import CommandError, call_command, get_commands
from django_q import cluster as django_q_cluster

from picloud.config import ConfigError, StopConfig
from picloud.management.commands import runstack
from picloud.management.commands.qcluster import Sentinel
from picloud.stopping import Descendants, kill_all, process_group, running
from tests.helpers import PROJECT_DIR, wait_for


def test_the_stop_grace_defaults_to_the_dispatchers_grace_plus_ten_seconds():
    assert StopConfig.from_env({}).grace_ms == 20_000
    assert StopConfig.from_env({"PICLOUD_DISPATCHER_SHUTDOWN_GRACE_MS": "30000"}).grace == 40.0
    assert StopConfig.from_env({"PICLOUD_STOP_GRACE_MS": "12000"}).grace_ms == 12_000


@pytest.mark.parametrize("value", ["11999", "0", "-1", "abc", "1.5", "3600001"])
def test_a_stop_grace_that_would_cut_the_dispatchers_short_is_refused(value):
    with pytest.raises(ConfigError) as excinfo:
        StopConfig.from_env({"PICLOUD_STOP_GRACE_MS": value})
    message = str(excinfo.value)
    assert f"PICLOUD_STOP_GRACE_MS={value!r}" in message
    assert "from 12000 to 3600000" in message
    assert "PICLOUD_DISPATCHER_SHUTDOWN_GRACE_MS + 2000" in message


def test_manage_py_qcluster_runs_picloud_s_command_not_django_q2_s():
    assert get_commands()["qcluster"] == "picloud"


def test_the_sentinel_ignores_sigterm_before_it_starts_its_processes(monkeypatch):
    seen = []
    monkeypatch.setattr(
        django_q_cluster.Sentinel,
        "start",
        lambda self: seen.append(signal.getsignal(signal.SIGTERM)),
    )
    previous = signal.getsignal(signal.SIGTERM)
    try:
        Sentinel.start(object.__new__(Sentinel))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIG_IGN]


class _StartedChild:
    """A child runstack believes it started; it has exited by the first look."""

    pid = returncode = 0

    def poll(self):
        return 0


@pytest.fixture
def signal_handlers_kept():
    # The commands here install handlers in this process: put pytest's back.
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield saved
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_runstack_handles_sigterm_before_it_starts_a_child_and_stops_what_started(
    monkeypatch, signal_handlers_kept
):
    # A SIGTERM with default handling would kill runstack and leave the
    # children, in their own sessions, running: the handlers come first.
    at_start = []

    def popen(cmd, **kwargs):
        handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
        at_start.append(handlers)
        if callable(handlers[1]) and handlers[1] is not signal_handlers_kept[signal.SIGTERM]:
            handlers[1](signal.SIGTERM, None)  # the SIGTERM arrives while starting
        return _StartedChild()

    stopped = []
    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(
        runstack.Command, "_stop", lambda self, children, grace: stopped.append(children) or []
    )
    try:
        call_command("runstack", stdout=io.StringIO(), stderr=io.StringIO())
    except CommandError as exc:
        error = str(exc)  # the children exiting by themselves, had the stop been missed
    else:
        error = None
    assert at_start, "runstack started no child"
    for handlers in at_start:
        assert handlers != tuple(signal_handlers_kept.values()), (
            "a child was started before runstack handled SIGINT and SIGTERM"
        )
    assert len(at_start) == 1, "a stop requested while starting must start no further child"
    assert [list(children) for children in stopped] == [["web"]], "what started is stopped"
    assert error is None, error
    assert tuple(signal.getsignal(s) for s in signal_handlers_kept) == tuple(
        signal_handlers_kept.values()
    ), "runstack puts the previous handlers back"


@pytest.mark.parametrize(("timer", "killed"), [(0, True), (-1, False), (-2, False), (7, False)])
def test_a_worker_past_its_task_timeout_is_still_killed(monkeypatch, timer, killed):
    # django-q2 marks such a worker with timer 0 and sends it SIGTERM, which it ignores.
    monkeypatch.setattr(django_q_cluster.Sentinel, "reincarnate", lambda self, process: None)
    sentinel = object.__new__(Sentinel)
    worker, monitor = mock.Mock(), mock.Mock()
    worker.timer.value = timer
    sentinel.pool = [worker]
    sentinel.reincarnate(worker)
    sentinel.reincarnate(monitor)
    assert worker.kill.called is killed
    assert not monitor.kill.called


# A supervisor that replaces its child as soon as it dies, as django-q2's does.
SUPERVISOR = """
import subprocess, sys, time
sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
child = subprocess.Popen(sleeper)
print(child.pid, flush=True)
while True:
    if child.poll() is not None:
        child = subprocess.Popen(sleeper)
    time.sleep(0.005)
"""
# Starts the supervisor and waits: the root of the tree under test.
ROOT = f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", {SUPERVISOR!r}]).wait()
"""


@pytest.fixture
def tree():
    root = subprocess.Popen([sys.executable, "-c", ROOT], start_new_session=True)
    descendants = Descendants(psutil.Process(root.pid))
    wait_for(lambda: len(descendants.refresh()) == 2, timeout=10, what="supervisor and child")
    yield root, descendants
    for proc in [*descendants.seen, *process_group(root.pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    root.wait()


def test_kill_all_kills_a_supervisor_its_child_and_any_replacement(tree):
    root, descendants = tree
    before = descendants.refresh()
    killed = kill_all(descendants.refresh)
    assert sorted(int(d.split()[0]) for d in killed) == sorted(p.pid for p in before)
    assert all("python" in d for d in killed), killed
    left = [p for p in process_group(root.pid) if p.pid != root.pid]
    assert not left, "nothing but the root (which may have exited since) is left"


def test_descendants_remembers_a_process_after_its_parent_died(tree):
    root, descendants = tree
    descendants.refresh()
    supervisor = psutil.Process(root.pid).children()[0]
    (child,) = supervisor.children()
    supervisor.kill()
    wait_for(lambda: child.ppid() != supervisor.pid, timeout=10, what="the child re-parented")
    assert child not in psutil.Process(root.pid).children(recursive=True)
    assert child in descendants.refresh()
    assert running([child]) == [child]


ADOPTER = """
import os, subprocess, sys
import psutil
from picloud.stopping import become_subreaper
assert become_subreaper()
middle = subprocess.Popen(
    [sys.executable, "-c",
     "import subprocess, sys; c = subprocess.Popen([sys.executable, '-c', "
     "'import time; time.sleep(30)']); print(c.pid, flush=True)"],
    stdout=subprocess.PIPE, text=True,
)
orphan = psutil.Process(int(middle.stdout.readline()))
middle.wait()  # the orphan's parent is gone
adopted = orphan.ppid() == os.getpid()
orphan.kill()
print("adopted" if adopted else f"re-parented to {orphan.ppid()}")
"""


def test_a_subreaper_adopts_the_orphans_of_a_child_that_died():
    """What lets qcluster find the workers of a sentinel killed at once."""
    proc = subprocess.run(
        [sys.executable, "-c", ADOPTER], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "adopted", proc.stdout + proc.stderr


def test_runstack_takes_a_child_ended_by_its_sigterm_as_stopped():
    # A child still starting (no handler of its own yet) dies of the SIGTERM:
    # nothing of its was running, so nothing to report.
    starting = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True
    )
    handles = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)"
    )
    failing = subprocess.Popen(
        [sys.executable, "-c", handles], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    assert failing.stdout.readline() == "ready\n", "its handler is in place"
    problems = runstack.Command()._stop({"starting": starting, "failing": failing}, grace=5.0)
    assert starting.returncode == -signal.SIGTERM
    assert problems == ["failing exited with status 3 while stopping"], problems
