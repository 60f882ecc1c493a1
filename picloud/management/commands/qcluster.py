"""`manage.py qcluster`: django-q2's cluster, made to stop completely.

This replaces django-q2's command of the same name (Django takes a command
from the first app in INSTALLED_APPS that has it, and `picloud` comes before
`django_q`). django-q2 runs the same; what changes is stopping:

- SIGTERM to the whole process group (`kill -- -PGID`, systemd's default
  `KillMode=control-group`) now stops the cluster in order, as SIGINT does.
  django-q2 let it kill the sentinel and the workers outright: the workers
  skipped their dispatcher's graceful stop, and a sentinel killed while it
  waited on its stop event left this process blocked forever setting it.
- Whatever still runs `PICLOUD_STOP_GRACE_MS` after the first SIGTERM or
  SIGINT is killed with SIGKILL — for instance workers stuck on the task
  queue's lock that a worker killed with `kill -9` died holding — and the
  command exits with status 1 naming what it killed.
- If the sentinel dies, the rest of the cluster is killed and the command
  exits with status 1, so a service manager restarts a whole cluster rather
  than keep headless workers.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import psutil
from django.conf import settings
from django.core.management.base import CommandError
from django_q import cluster as django_q_cluster
from django_q.management.commands.qcluster import Command as DjangoQClusterCommand

from picloud.config import ConfigError, StopConfig, build_all
from picloud.stopping import Descendants, become_subreaper, kill_all, wait_gone

logger = logging.getLogger("django-q")  # where django-q2 logs the cluster's start and stop

TICK = 0.2  # seconds between checks of the running cluster; also how late a stop may start


class Sentinel(django_q_cluster.Sentinel):
    """django-q2's supervisor, with SIGTERM ignored in it and every process it starts."""

    def start(self) -> None:
        # django-q2 ignores SIGINT here and below so that Ctrl-C, which the
        # terminal sends to the whole group, reaches the cluster only through
        # its main process, which stops it in order; SIGTERM to the group
        # deserves the same. Set before spawning: children inherit it.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        super().start()

    def reincarnate(self, process) -> None:
        # django-q2 ends a worker stuck past its task's timeout with SIGTERM,
        # which the worker now ignores: end it the way SIGTERM used to.
        timed_out = process in self.pool and process.timer.value == 0
        super().reincarnate(process)
        if timed_out:
            process.kill()


class _Interrupted(Exception):
    """A stop signal arrived while the cluster was starting."""


class StopSignals:
    """Notes the first SIGTERM or SIGINT; the main loop acts on it."""

    def __init__(self) -> None:
        self.received_at: float | None = None  # time.monotonic() of the first one
        self.name = ""
        self.starting = False  # interrupt the start: it can wait on the sentinel forever
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()
            self.name = signal.Signals(signum).name
        if self.starting:
            raise _Interrupted


class Command(DjangoQClusterCommand):
    help = (
        "Starts the django-q2 cluster (each worker hosts an outbox dispatcher); SIGTERM or "
        "SIGINT stops it, killing what is left after PICLOUD_STOP_GRACE_MS."
    )

    def handle(self, *args, run_once: bool = False, cluster_name: str | None = None, **options):
        try:
            # Checks already ran unless --skip-checks: a bad value must not
            # start processes that would fail on it later.
            build_all()
            grace = StopConfig.current().grace
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        settings.SECRET_KEY  # noqa: B018 - as django-q2's command: the cluster signs with it
        if cluster_name:
            os.environ["Q_CLUSTER_NAME"] = cluster_name
        # Cluster.start() builds its sentinel from this module global.
        django_q_cluster.Sentinel = Sentinel
        cluster = django_q_cluster.Cluster()
        signals = StopSignals()  # after Cluster(), which installs its own handlers
        # Before any process starts: a sentinel that dies at once must not
        # leave its workers to PID 1, out of our sight.
        become_subreaper()
        tree = Descendants(psutil.Process())
        failed = self._start(cluster, signals)
        if failed:
            killed = kill_all(tree.refresh)
            raise CommandError(f"{failed}; killed with SIGKILL: {_listed(killed)}")
        while signals.received_at is None and not run_once:
            tree.refresh()
            if not cluster.sentinel.is_alive():
                self._sentinel_died(cluster, tree)
            time.sleep(TICK)
        deadline = (signals.received_at or time.monotonic()) + grace
        self._stop(cluster, tree, deadline, f"{grace:g} s after {signals.name or 'starting'}")

    def _start(self, cluster, signals: StopSignals) -> RuntimeError | None:
        """Start the cluster; return why it failed, if it did."""
        signals.starting = True
        try:
            cluster.start()
        except _Interrupted:
            pass
        except RuntimeError as exc:  # the sentinel died while starting
            return exc
        finally:
            signals.starting = False
        return None

    def _stop(self, cluster, tree: Descendants, deadline: float, when: str) -> None:
        tree.refresh()
        logger.info("Q Cluster %s stopping.", cluster.name)
        if cluster.sentinel is not None and cluster.sentinel.is_alive():
            # In a thread: if the sentinel died inside Event.wait(), set()
            # waits forever for it to wake; the deadline below still holds.
            threading.Thread(target=cluster.stop_event.set, daemon=True).start()
            cluster.sentinel.join(max(0.0, deadline - time.monotonic()))
        if wait_gone(tree.refresh(), deadline):
            killed = kill_all(tree.refresh)
            raise CommandError(
                f"qcluster: still running {when}; killed with SIGKILL: {_listed(killed)}"
            )
        logger.info("Q Cluster %s has stopped.", cluster.name)

    def _sentinel_died(self, cluster, tree: Descendants) -> None:
        killed = kill_all(tree.refresh)
        raise CommandError(
            f"qcluster: the sentinel (pid {cluster.sentinel.pid}) exited with code "
            f"{cluster.sentinel.exitcode}; killed with SIGKILL: {_listed(killed)}"
        )


def _listed(descriptions: list[str]) -> str:
    return ", ".join(descriptions) or "nothing"
