"""The DeadLetterRepo and AbandonedRepo contracts.

Implementations: pg_repository.py (PostgreSQL) and memory_repository.py;
tests/contract holds both to the same behaviour.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from deadletters.models import Resolution
from outbox.storage.kinds import SourceKind
from picloud.db.batches import ProgressCallback
from picloud.text import truncate

MAX_SUMMARY_CHARS = 1_000  # abandoned_executions.result_summary, capped at write time
MAX_PAGE_SIZE = 500


@dataclass(frozen=True)
class NewDeadLetter:
    app_id: uuid.UUID
    source_kind: str
    script_id: uuid.UUID | None
    trigger_id: uuid.UUID | None
    run_as_principal: uuid.UUID | None
    outbox_id: uuid.UUID | None
    payload: dict[str, Any]
    last_error: str
    errors: tuple[str, ...] = ()
    attempts: int = 0
    depth: int = 0
    # Only on a write stopped by the depth limit: the row whose script made it.
    cause_outbox_id: uuid.UUID | None = None


@dataclass(frozen=True)
class DeadLetterRecord:
    id: uuid.UUID
    app_id: uuid.UUID
    source_kind: str
    script_id: uuid.UUID | None
    trigger_id: uuid.UUID | None
    run_as_principal: uuid.UUID | None
    outbox_id: uuid.UUID | None
    cause_outbox_id: uuid.UUID | None
    payload: dict[str, Any]
    last_error: str
    errors: tuple[str, ...]
    attempts: int
    depth: int
    created_at: datetime
    resolution: str | None
    resolved_at: datetime | None
    resolved_by: uuid.UUID | None
    note: str

    @property
    def is_resolved(self) -> bool:
        return self.resolution is not None


@dataclass(frozen=True)
class DeadLetterFilter:
    """List filters; None means "any"."""

    app_ids: Collection[uuid.UUID] | None = None
    source_kind: str | None = None
    trigger_id: uuid.UUID | None = None
    resolved: bool | None = None
    resolution: str | None = None
    created_before: datetime | None = None
    created_after: datetime | None = None


class DeadLetterNotFound(LookupError):
    pass


class AlreadyResolved(Exception):
    """A dead letter is resolved once; the first resolution stands."""

    def __init__(self, record: DeadLetterRecord):
        self.record = record
        super().__init__(
            f"dead letter {record.id} is already resolved as {record.resolution!r} "
            f"at {record.resolved_at:%Y-%m-%d %H:%M:%S}"
        )


class DeadLetterRepo(Protocol):
    def insert(self, new: NewDeadLetter) -> DeadLetterRecord | None:
        """Store an unresolved dead letter (joins the caller's transaction).

        Once per stopped event when cause_outbox_id is set: None, and
        nothing stored, when a letter with the same cause_outbox_id,
        trigger_id and payload collection and key exists already (a letter
        lacking any of these is always stored).
        """

    def get(self, dead_letter_id: uuid.UUID) -> DeadLetterRecord | None:
        """The dead letter, or None."""

    def list(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[DeadLetterRecord]:
        """Matching dead letters, newest first (ties by id); limit is 1..MAX_PAGE_SIZE."""

    def unresolved_count(
        self, app_id: uuid.UUID | None = None, *, app_ids: Collection[uuid.UUID] | None = None
    ) -> int:
        """Unresolved dead letters of one app, of a set of apps, or of all."""

    def resolve(
        self,
        dead_letter_id: uuid.UUID,
        resolution: str,
        by: uuid.UUID | None,
        note: str = "",
    ) -> DeadLetterRecord:
        """Resolve once, atomically: concurrent callers cannot both succeed.

        Records who (None for the system) and when. Raises ValueError for a
        resolution outside the four, DeadLetterNotFound, or AlreadyResolved.
        """

    def gc(
        self,
        older_than: datetime,
        batch_size: int,
        *,
        include_unresolved: bool = False,
        on_batch: ProgressCallback | None = None,
    ) -> int:
        """Delete resolved dead letters resolved before `older_than` (and, with
        include_unresolved, unresolved ones created before it) in batches of
        `batch_size`, each its own short statement; `on_batch(deleted_so_far)`
        after each. Returns how many were deleted."""

    def gc_count(self, older_than: datetime, *, include_unresolved: bool = False) -> int:
        """How many dead letters `gc` with these arguments would delete now."""


@dataclass(frozen=True)
class NewAbandonedExecution:
    app_id: uuid.UUID
    outbox_id: uuid.UUID
    script_id: uuid.UUID | None
    inbox_id: uuid.UUID
    status_code: int
    result_summary: str | None


@dataclass(frozen=True)
class AbandonedRecord:
    id: uuid.UUID
    app_id: uuid.UUID
    outbox_id: uuid.UUID
    script_id: uuid.UUID | None
    inbox_id: uuid.UUID
    status_code: int
    result_summary: str | None
    created_at: datetime = field(compare=False)


class AbandonedRepo(Protocol):
    def insert(self, new: NewAbandonedExecution) -> AbandonedRecord:
        """Store one; result_summary is capped at MAX_SUMMARY_CHARS here."""

    def list(self, app_id: uuid.UUID | None = None, *, limit: int = 50) -> list[AbandonedRecord]:
        """Newest first."""

    def gc(
        self, older_than: datetime, batch_size: int, *, on_batch: ProgressCallback | None = None
    ) -> int:
        """Delete rows created before `older_than`, in batches; returns how many."""

    def gc_count(self, older_than: datetime) -> int:
        """How many rows `gc` would delete now."""


def check_resolution(resolution: str) -> None:
    if resolution not in Resolution.values:
        raise ValueError(
            f"unknown resolution {resolution!r}; allowed: {', '.join(Resolution.values)}"
        )


def check_new_dead_letter(new: NewDeadLetter) -> None:
    if new.source_kind not in SourceKind.values:
        raise ValueError(
            f"unknown source kind {new.source_kind!r}; allowed: {', '.join(SourceKind.values)}"
        )


def check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be 1..{MAX_PAGE_SIZE}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")


def cap_summary(summary: str | None) -> str | None:
    return None if summary is None else truncate(summary, MAX_SUMMARY_CHARS)
