"""The processes of the chaos run: a web server, the SMTP receiver and the
`qcluster` nodes, each in its own process group so a fault can end one
worker or a whole node."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from picloud.stopping import process_group, wait_gone

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent


class Proc:
    """One command in a process group of its own, its output in `log`."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log_path = name, argv, env, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=PROJECT_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> set[int]:
        """Every process of the group (the leader and what it started)."""
        return {p.pid for p in process_group(self.pid)} if self.proc else set()

    def db_connections(self, port: int) -> int:
        """TCP connections the group holds to the database on `port`."""
        count = 0
        for pid in self.pids():
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            count += sum(1 for c in conns if c.raddr and c.raddr.port == port)
        return count

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> set[int]:
        pids = self.pids()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()
        wait_gone([psutil.Process(p) for p in pids if psutil.pid_exists(p)], time.monotonic() + 10)
        return pids

    def terminate(self, timeout: float = 60) -> set[int]:
        """SIGTERM, then wait; SIGKILL what is left after `timeout`."""
        pids = self.pids()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill9()
        left = [p for p in process_group(self.pid)] if self.proc else []
        if left:
            for p in left:
                p.kill()
        return pids


class Node(Proc):
    """One `manage.py qcluster`: django-q2's sentinel, its workers (each
    hosting a dispatcher) and its helpers."""

    def __init__(self, number: int, env: dict[str, str], logs: Path) -> None:
        argv = [sys.executable, "manage.py", "qcluster"]
        super().__init__(f"node{number}", argv, env, logs / f"node{number}.log")
        self.workers = int(env.get("PICLOUD_QCLUSTER_WORKERS", "2"))

    def ready(self) -> bool:
        return self.alive() and self.log().count("listening for outbox rows") >= self.workers

    def worker_pids(self) -> list[int]:
        """Processes of the node that are not its leader (the workers among them)."""
        return sorted(self.pids() - {self.pid})


def web(env: dict[str, str], logs: Path, addr: str) -> Proc:
    argv = [sys.executable, "-m", "gunicorn", "picloud.wsgi:application"]
    argv += ["--worker-class", "gthread", "--workers", "1", "--threads", "16"]
    argv += ["--bind", addr, "--graceful-timeout", "5"]
    return Proc("web", argv, env, logs / "web.log")


def smtp(env: dict[str, str], logs: Path) -> Proc:
    return Proc("smtp", [sys.executable, "manage.py", "smtpserver"], env, logs / "smtp.log")
