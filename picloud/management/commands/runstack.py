"""Run the web server, the django-q2 cluster and the SMTP receiver together
in the foreground.

The web server is gunicorn with threads, as docs/api.md recommends for
production: a synchronous invocation holds its request thread while it
waits, and Django's runserver turns away bursts of connections.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from gunicorn.util import parse_address

from picloud.config import ConfigError, EmailConfig, StopConfig, build_all
from picloud.stopping import kill_all, process_group, wait_gone

# Beyond the children's own grace (PICLOUD_STOP_GRACE_MS), before runstack
# kills what is left of them: qcluster kills its stragglers itself when its
# grace ends and reports them, which takes well under a second.
KILL_MARGIN = 3.0  # seconds


class Command(BaseCommand):
    help = (
        "Start the web server, `manage.py qcluster` and `manage.py smtpserver` together; "
        "Ctrl-C stops them all."
    )

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
        try:
            # Checks already ran unless --skip-checks: a bad value must not
            # start processes that would fail on it later.
            build_all()
            grace = StopConfig.current().grace
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        if warning := exposed_bind_warning(addr):
            self.stderr.write(warning)
        manage = str(Path(settings.BASE_DIR) / "manage.py")
        web = [sys.executable, "-m", "gunicorn", "picloud.wsgi:application"]
        web += ["--worker-class", "gthread", "--workers", "1", "--threads", str(threads)]
        web += ["--bind", addr, "--access-logfile", "-", "--chdir", str(settings.BASE_DIR)]
        web += ["--graceful-timeout", str(math.ceil(grace))]
        commands = {
            "web": web,
            "cluster": [sys.executable, manage, "qcluster"],
            "smtp": [sys.executable, manage, "smtpserver"],
        }
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        # Handlers first: a SIGTERM with default handling, once a child runs,
        # would end runstack and leave the children (in their own sessions)
        # running with no one to stop them. Installed here, a stop asked for
        # while starting starts no further child and stops those started.
        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        children: dict[str, subprocess.Popen] = {}
        failed = None
        try:
            for name, cmd in commands.items():
                if stopping:
                    break
                # Each child leads its own session and process group: a signal
                # to runstack's group (Ctrl-C, `kill -- -PGID`, systemd) reaches
                # runstack alone, which stops the children in order; and
                # whatever a child leaves behind, even re-parented to PID 1, is
                # still in its group.
                children[name] = subprocess.Popen(cmd, start_new_session=True)
            if not stopping:
                smtp = EmailConfig.current().smtp_addr
                self.stdout.write(
                    f"picloud: web on http://{addr}/admin/, SMTP on {smtp}, qcluster started; "
                    "Ctrl-C stops them all"
                )
            while not stopping:
                for name, proc in children.items():
                    if proc.poll() is not None:
                        failed = (name, proc.returncode)
                        stopping = True
                time.sleep(0.2)  # supervision tick; nothing time-critical waits on it
        finally:
            problems = self._stop(children, grace)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if failed:
            problems.insert(0, f"{failed[0]} exited with status {failed[1]}; stopped the rest")
        if problems:
            raise CommandError("; ".join(problems))

    def _stop(self, children: dict[str, subprocess.Popen], grace: float) -> list[str]:
        """SIGTERM each child, then SIGKILL what is left of its process group; say what."""
        running = {name for name, proc in children.items() if proc.poll() is None}
        for name in running:
            children[name].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + KILL_MARGIN
        problems = []
        for name, proc in children.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if wait_gone(process_group(proc.pid), deadline):
                killed = kill_all(lambda pgid=proc.pid: process_group(pgid))
                problems.append(
                    f"{name} still running {grace + KILL_MARGIN:g} s after SIGTERM; "
                    f"killed with SIGKILL: {', '.join(killed)}"
                )
            elif name in running and proc.wait() not in (0, -signal.SIGTERM):
                # qcluster exits 1 when it had to kill part of itself (it said
                # what). Ended by the SIGTERM itself is a child still starting,
                # before it took over the signal: nothing of its was running.
                problems.append(f"{name} exited with status {proc.returncode} while stopping")
            proc.wait()
        return problems


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
