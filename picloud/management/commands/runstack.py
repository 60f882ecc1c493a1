"""Run the web server and the django-q2 cluster together in the foreground.

The web server is gunicorn with threads, as docs/api.md recommends for
production: a synchronous invocation holds its request thread while it
waits, and Django's runserver turns away bursts of connections.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from gunicorn.util import parse_address

STOP_GRACE = 15.0  # seconds each child gets to exit after SIGTERM before SIGKILL


class Command(BaseCommand):
    help = "Start the web server and `manage.py qcluster` together; Ctrl-C stops both."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="host:port to serve on")
        parser.add_argument(
            "--threads",
            type=int,
            default=256,
            help="requests served at once (each waiting invocation holds one)",
        )

    def handle(self, *args, addr: str, threads: int, **options):
        if threads < 1:
            raise CommandError(f"--threads must be at least 1, got {threads}")
        if warning := exposed_bind_warning(addr):
            self.stderr.write(warning)
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        web = [sys.executable, "-m", "gunicorn", "picloud.wsgi:application"]
        web += ["--worker-class", "gthread", "--workers", "1", "--threads", str(threads)]
        web += ["--bind", addr, "--access-logfile", "-", "--chdir", str(settings.BASE_DIR)]
        commands = {
            "web": web,
            "cluster": [sys.executable, manage, "qcluster"],
        }
        children = {name: subprocess.Popen(cmd) for name, cmd in commands.items()}
        self.stdout.write(
            f"picloud: web on http://{addr}/admin/ and qcluster started; Ctrl-C stops both"
        )

        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        failed = None
        try:
            while not stopping:
                for name, proc in children.items():
                    if proc.poll() is not None:
                        failed = (name, proc.returncode)
                        stopping = True
                time.sleep(0.2)  # supervision tick; nothing time-critical waits on it
        finally:
            self._stop(children)
        if failed:
            raise CommandError(f"{failed[0]} exited with status {failed[1]}; stopped the rest")

    def _stop(self, children: dict[str, subprocess.Popen]) -> None:
        for proc in children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in children.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def exposed_bind_warning(addr: str) -> str | None:
    """A warning when `addr` (gunicorn's --bind syntax) is reachable from other hosts.

    gthread threads read request headers blocking, with no timeout gunicorn
    lets us set: a few hundred clients that send headers slowly hold every
    thread. Only a buffering proxy in front bounds that.
    """
    try:
        parsed = parse_address(addr)
    except RuntimeError:
        return None  # malformed: gunicorn refuses it with its own message
    if not isinstance(parsed, tuple):
        return None  # a unix socket or an inherited file descriptor: not ours to judge
    host = parsed[0]
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False  # a host name or "" (every interface)
    if loopback:
        return None
    return (
        f"picloud: warning: serving on {addr}, reachable from other hosts. Slow clients "
        "can hold every gunicorn thread; bind to 127.0.0.1 behind a buffering reverse "
        'proxy (docs/api.md, "Serving it").'
    )
