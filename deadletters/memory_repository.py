"""DeadLetterRepo and AbandonedRepo in memory; held to the same contract."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Collection
from dataclasses import replace
from datetime import datetime

from django.utils import timezone

from deadletters.repository import (
    AbandonedRecord,
    AlreadyResolved,
    DeadLetterFilter,
    DeadLetterNotFound,
    DeadLetterRecord,
    NewAbandonedExecution,
    NewDeadLetter,
    ProgressCallback,
    cap_summary,
    check_new_dead_letter,
    check_page,
    check_resolution,
)
from picloud.db.batches import check_batch_size


def _delete_in_batches(rows: dict, doomed: list, batch_size: int, on_batch) -> int:
    total = 0
    for start in range(0, len(doomed), batch_size):
        batch = doomed[start : start + batch_size]
        for key in batch:
            rows.pop(key, None)
        total += len(batch)
        if on_batch:
            on_batch(total)
    return total


def _stopped_event(letter: NewDeadLetter | DeadLetterRecord) -> tuple | None:
    """The key of dead_letters_stopped_event_key, or None where it has a NULL
    (NULLs never conflict in a unique index)."""
    payload = letter.payload if isinstance(letter.payload, dict) else {}
    event = (
        letter.cause_outbox_id,
        letter.trigger_id,
        payload.get("collection"),
        payload.get("key"),
    )
    return None if None in event else event


def _newest_first(records):
    return sorted(records, key=lambda r: (r.created_at, str(r.id)), reverse=True)


class MemoryDeadLetterRepo:
    def __init__(self, clock: Callable[[], datetime] = timezone.now) -> None:
        self.clock = clock
        self.rows: dict[uuid.UUID, DeadLetterRecord] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.rows.clear()

    def insert(self, new: NewDeadLetter) -> DeadLetterRecord | None:
        check_new_dead_letter(new)
        record = DeadLetterRecord(
            id=uuid.uuid4(),
            **{**new.__dict__, "errors": tuple(new.errors)},
            created_at=self.clock(),
            resolution=None,
            resolved_at=None,
            resolved_by=None,
            note="",
        )
        with self._lock:
            if self._cause_recorded(new):
                return None
            self.rows[record.id] = record
        return record

    def _cause_recorded(self, new: NewDeadLetter) -> bool:
        event = _stopped_event(new)
        return event is not None and any(_stopped_event(r) == event for r in self.rows.values())

    def get(self, dead_letter_id: uuid.UUID) -> DeadLetterRecord | None:
        return self.rows.get(dead_letter_id)

    def list(
        self, filters: DeadLetterFilter | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[DeadLetterRecord]:
        check_page(limit, offset)
        f = filters or DeadLetterFilter()

        def keep(r: DeadLetterRecord) -> bool:
            return (
                (f.app_ids is None or r.app_id in f.app_ids)
                and f.source_kind in (None, r.source_kind)
                and f.trigger_id in (None, r.trigger_id)
                and f.resolved in (None, r.is_resolved)
                and f.resolution in (None, r.resolution)
                and (f.created_before is None or r.created_at < f.created_before)
                and (f.created_after is None or r.created_at >= f.created_after)
            )

        return _newest_first(filter(keep, self.rows.values()))[offset : offset + limit]

    def unresolved_count(
        self, app_id: uuid.UUID | None = None, *, app_ids: Collection[uuid.UUID] | None = None
    ) -> int:
        if app_id is not None and app_ids is not None:
            raise TypeError("pass app_id or app_ids, not both")
        wanted = {app_id} if app_id is not None else app_ids
        return sum(
            1
            for r in self.rows.values()
            if not r.is_resolved and (wanted is None or r.app_id in wanted)
        )

    def resolve(
        self, dead_letter_id: uuid.UUID, resolution: str, by: uuid.UUID | None, note: str = ""
    ) -> DeadLetterRecord:
        check_resolution(resolution)
        with self._lock:
            current = self.rows.get(dead_letter_id)
            if current is None:
                raise DeadLetterNotFound(dead_letter_id)
            if current.is_resolved:
                raise AlreadyResolved(current)
            record = replace(
                current, resolution=resolution, resolved_at=self.clock(), resolved_by=by, note=note
            )
            self.rows[dead_letter_id] = record
        return record

    def gc(
        self,
        older_than: datetime,
        batch_size: int,
        *,
        include_unresolved: bool = False,
        on_batch: ProgressCallback | None = None,
    ) -> int:
        check_batch_size(batch_size)
        with self._lock:
            doomed = self._doomed(older_than, include_unresolved)
            return _delete_in_batches(self.rows, doomed, batch_size, on_batch)

    def gc_count(self, older_than: datetime, *, include_unresolved: bool = False) -> int:
        with self._lock:
            return len(self._doomed(older_than, include_unresolved))

    def _doomed(self, older_than: datetime, include_unresolved: bool) -> list[uuid.UUID]:
        return [
            r.id
            for r in self.rows.values()
            if (r.is_resolved and r.resolved_at < older_than)
            or (include_unresolved and not r.is_resolved and r.created_at < older_than)
        ]


class MemoryAbandonedRepo:
    def __init__(self, clock: Callable[[], datetime] = timezone.now) -> None:
        self.clock = clock
        self.rows: dict[uuid.UUID, AbandonedRecord] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.rows.clear()

    def insert(self, new: NewAbandonedExecution) -> AbandonedRecord:
        record = AbandonedRecord(
            id=uuid.uuid4(),
            **{**new.__dict__, "result_summary": cap_summary(new.result_summary)},
            created_at=self.clock(),
        )
        with self._lock:
            self.rows[record.id] = record
        return record

    def list(self, app_id: uuid.UUID | None = None, *, limit: int = 50) -> list[AbandonedRecord]:
        check_page(limit, 0)
        rows = (r for r in self.rows.values() if app_id in (None, r.app_id))
        return _newest_first(rows)[:limit]

    def gc(
        self, older_than: datetime, batch_size: int, *, on_batch: ProgressCallback | None = None
    ) -> int:
        check_batch_size(batch_size)
        with self._lock:
            doomed = [r.id for r in self.rows.values() if r.created_at < older_than]
            return _delete_in_batches(self.rows, doomed, batch_size, on_batch)

    def gc_count(self, older_than: datetime) -> int:
        with self._lock:
            return sum(r.created_at < older_than for r in self.rows.values())
