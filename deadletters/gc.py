"""Retention sweeps: resolved dead letters and abandoned executions.

The management commands and the daily django-q2 schedule both call these;
each deletes in batches (one short statement and commit per batch) through
the repositories' ``gc``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from deadletters.repository import AbandonedRepo, DeadLetterRepo
from picloud.db.batches import BATCH_SIZE

Progress = Callable[[int, int], None]  # (deleted so far, expected total)


@dataclass(frozen=True)
class SweepResult:
    what: str
    cutoff: datetime
    matched: int  # rows matching when the sweep started
    deleted: int  # 0 on a dry run
    seconds: float
    dry_run: bool

    def summary(self) -> str:
        when = f"{self.cutoff:%Y-%m-%d %H:%M} UTC"
        if self.dry_run:
            return f"Dry run: would delete {self.matched} {self.what} older than {when}."
        return f"Deleted {self.deleted} {self.what} older than {when} in {self.seconds:.1f} s."


def sweep_dead_letters(
    repo: DeadLetterRepo,
    *,
    older_than_days: int,
    include_unresolved: bool = False,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
) -> SweepResult:
    cutoff = timezone.now() - timedelta(days=older_than_days)
    what = "dead letters (resolved or not)" if include_unresolved else "resolved dead letters"
    started = time.monotonic()
    matched = repo.gc_count(cutoff, include_unresolved=include_unresolved)
    deleted = 0
    if not dry_run and matched:
        deleted = repo.gc(
            cutoff,
            batch_size,
            include_unresolved=include_unresolved,
            on_batch=(lambda n: progress(n, matched)) if progress else None,
        )
    return SweepResult(what, cutoff, matched, deleted, time.monotonic() - started, dry_run)


def sweep_abandoned(
    repo: AbandonedRepo,
    *,
    older_than_days: int,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
) -> SweepResult:
    cutoff = timezone.now() - timedelta(days=older_than_days)
    started = time.monotonic()
    matched = repo.gc_count(cutoff)
    deleted = 0
    if not dry_run and matched:
        on_batch = (lambda n: progress(n, matched)) if progress else None
        deleted = repo.gc(cutoff, batch_size, on_batch=on_batch)
    return SweepResult(
        "abandoned executions", cutoff, matched, deleted, time.monotonic() - started, dry_run
    )
