"""CPU time per group of processes over a span, read from /proc while it runs.

    with CpuGroups(discover) as cpu:
        ...                      # the work measured
    cpu.cores()                  # {"group": cores used on average, ..., "machine": busy share}

`discover()` returns {group: [pid, ...]} and is called every `every` seconds,
so processes born during the span (a new PostgreSQL backend) are counted
from their birth and processes that end keep what they used until their
last sample. A process's CPU is utime + stime of /proc/<pid>/stat; the
machine's busy share comes from /proc/stat (every core, other users' work
included), so what no group accounts for is visible as "other".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")  # /proc counts CPU time in clock ticks


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) the process has used, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime: fields 14 and 15


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    total = sum(values[:8])  # guest time is already counted in user
    return (total - idle) / TICKS, total / TICKS


class CpuGroups:
    def __init__(self, discover: Callable[[], dict[str, list[int]]], every: float = 0.5) -> None:
        self.discover, self.every = discover, every
        self.first: dict[tuple[str, int], float] = {}
        self.last: dict[tuple[str, int], float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuGroups:
        self.started = time.monotonic()
        self.machine_before = machine_cpu()
        self._sample(initial=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self._sample(initial=False)
        self.wall = time.monotonic() - self.started
        self.machine_after = machine_cpu()

    def _run(self) -> None:
        while not self.done.wait(self.every):
            self._sample(initial=False)

    def _sample(self, *, initial: bool) -> None:
        for group, pids in self.discover().items():
            for pid in pids:
                used = process_cpu(pid)
                if used is None:
                    continue
                key = (group, pid)
                # A process first seen after the start was born during the
                # span (or joined the group): all its CPU belongs to it.
                self.first.setdefault(key, used if initial else 0.0)
                self.last[key] = used

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (group, pid), used in self.last.items():
            out[group] = out.get(group, 0.0) + used - self.first[(group, pid)]
        return out

    def cores(self) -> dict[str, float]:
        """Cores each group used on average over the span; "other" is the
        machine's busy time no group accounts for; "machine" the share of
        all cores busy."""
        out = {group: used / self.wall for group, used in self.seconds().items()}
        busy = self.machine_after[0] - self.machine_before[0]
        total = self.machine_after[1] - self.machine_before[1]
        out["other"] = max(0.0, busy / self.wall - sum(out.values()))
        out["machine"] = busy / total if total else 0.0
        return out
