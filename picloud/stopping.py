"""Stopping a tree of processes completely, and saying what had to be killed.

`qcluster` and `runstack` first ask their processes to stop in order; what is
still running when the grace ends is frozen, looked for once more and killed
with SIGKILL, and the commands report what they killed. Freezing first matters:
a supervisor (django-q2's sentinel, gunicorn's arbiter) that sees a child die
starts a replacement, which would be re-parented to PID 1 before anyone looked
for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
import time
from collections.abc import Callable, Iterable

import psutil

POLL = 0.05  # seconds between checks while waiting for processes to exit
KILL_WAIT = 2.0  # seconds SIGKILLed processes get to disappear (it takes milliseconds)
TITLE_CHARS = 60  # how much of a command line a report shows
PR_SET_CHILD_SUBREAPER = 36  # prctl option, Linux 3.4+


def become_subreaper() -> bool:
    """Have orphaned descendants re-parented to this process, not PID 1 (Linux).

    A supervisor that dies (django-q2's sentinel killed with SIGKILL) leaves
    its children to whoever adopts them; as their subreaper, this process
    still finds them among its own descendants, however soon after starting
    that happens. False where the platform has no such thing.
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """The processes that still run; a zombie has exited and only awaits its parent."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


def wait_gone(procs: Iterable[psutil.Process], deadline: float) -> list[psutil.Process]:
    """Wait until every process has exited or `deadline` (monotonic) passes; return the rest."""
    procs = list(procs)
    while True:
        left = running(procs)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL)


def describe(proc: psutil.Process) -> str:
    try:
        argv = proc.cmdline()
        title = " ".join([os.path.basename(argv[0]), *argv[1:]]) if argv else proc.name()
    except psutil.Error:
        title = "?"
    if len(title) > TITLE_CHARS:
        title = title[: TITLE_CHARS - 1] + "…"
    return f"{proc.pid} ({title})"


def kill_all(find: Callable[[], Iterable[psutil.Process]]) -> list[str]:
    """SIGKILL every process `find` returns; return a description of each one killed.

    `find` is called again after each round of freezing (SIGSTOP), until it
    finds nothing new: a frozen process starts nothing, so nothing escapes.
    """
    frozen: dict[psutil.Process, str] = {}
    while new := [p for p in running(find()) if p not in frozen]:
        for proc in new:
            frozen[proc] = describe(proc)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.suspend()
    for proc in frozen:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    wait_gone(frozen, time.monotonic() + KILL_WAIT)
    return list(frozen.values())


class Descendants:
    """Every process started under `root`, remembered after it is re-parented.

    A process whose parent dies is re-parented to PID 1 and no longer shows
    among `root`'s children; `refresh()` regularly, so the tree is known
    before that happens.
    """

    def __init__(self, root: psutil.Process | None = None) -> None:
        self.root = root or psutil.Process()
        self.seen: set[psutil.Process] = set()

    def refresh(self) -> list[psutil.Process]:
        try:
            current = self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            current = []
        self.seen = set(running(self.seen)) | set(current)
        return list(self.seen)


def process_group(pgid: int) -> list[psutil.Process]:
    """The running members of a process group (it outlives its leader)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return running(members)
