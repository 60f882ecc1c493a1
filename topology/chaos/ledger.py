"""The chaos run's ledger: what was produced, what ran how often, and
whether each duplicate has a fault to explain it."""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta

SCHEMA = """
CREATE TABLE IF NOT EXISTS chaos_produced (
    uid text NOT NULL,
    script text NOT NULL,      -- the script expected to run for it
    source text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (uid, script)
);
CREATE TABLE IF NOT EXISTS chaos_executions (
    id bigserial PRIMARY KEY,
    uid text NOT NULL,
    script text NOT NULL,
    outbox_id uuid,
    attempt int,
    pid int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

# A fault explains a second execution when it came after the first one
# started (less this much: the first's row is written as it ends, the fault
# logged as it is sent) and before the second.
EXPLAIN_SLACK = timedelta(seconds=2)


@dataclass(frozen=True)
class Fault:
    at: datetime
    kind: str
    detail: str
    pids: frozenset[int] = frozenset()  # processes it ended; empty: it hit the database
    db_wide: bool = False  # every session (terminated, or the server restarted)


@dataclass(frozen=True)
class Execution:
    uid: str
    script: str
    pid: int
    at: datetime


@dataclass
class Ledger:
    produced: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    executed_once: int = 0
    executed_more: int = 0  # events run more than once
    extra_runs: int = 0  # runs beyond the first, over those events
    explained: int = 0  # of extra_runs, those a fault explains
    unexplained: list[tuple[str, str]] = field(default_factory=list)
    lost: list[tuple[str, str]] = field(default_factory=list)
    unconfirmed_runs: int = 0  # runs of writes the client was not told had committed
    dead_letters: int = 0
    designed_dead_letters: int = 0
    stuck_rows: int = 0
    stuck_messages: int = 0
    duplicates_by_fault: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            not self.lost
            and not self.unexplained
            and self.stuck_rows == 0
            and self.stuck_messages == 0
            and self.dead_letters == self.designed_dead_letters
        )


def explaining_fault(first: Execution, second: Execution, faults: list[Fault]) -> Fault | None:
    """The fault that lets `second` run `first`'s event again, if any."""
    for fault in faults:
        if not (first.at - EXPLAIN_SLACK <= fault.at <= second.at):
            continue
        if fault.db_wide or first.pid in fault.pids:
            return fault
    return None


def tally(
    produced: list[tuple[str, str, str]],  # (uid, script, source)
    executions: list[Execution],
    faults: list[Fault],
) -> Ledger:
    ledger = Ledger(produced=len(produced))
    ledger.by_source = dict(collections.Counter(source for _, _, source in produced))
    runs: dict[tuple[str, str], list[Execution]] = collections.defaultdict(list)
    for execution in executions:
        runs[(execution.uid, execution.script)].append(execution)
    expected = {(uid, script) for uid, script, _ in produced}
    for key in expected:
        seen = sorted(runs.get(key, ()), key=lambda e: e.at)
        if not seen:
            ledger.lost.append(key)
        elif len(seen) == 1:
            ledger.executed_once += 1
        else:
            ledger.executed_more += 1
            for first, second in itertools.pairwise(seen):
                ledger.extra_runs += 1
                fault = explaining_fault(first, second, faults)
                if fault is None:
                    ledger.unexplained.append(key)
                else:
                    ledger.explained += 1
                    ledger.duplicates_by_fault[fault.kind] = (
                        ledger.duplicates_by_fault.get(fault.kind, 0) + 1
                    )
    ledger.unconfirmed_runs = sum(len(v) for k, v in runs.items() if k not in expected)
    return ledger
