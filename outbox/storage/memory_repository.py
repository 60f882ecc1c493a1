"""OutboxRepo in memory, for fast dispatcher tests; held to the same contract."""

from __future__ import annotations

import bisect
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from django.utils import timezone

from outbox.storage.delivery_log import Acked, MemoryDeliveryLog, attempt_of_row
from outbox.storage.memory_circuits import MemoryCircuitRepo
from outbox.storage.repository import (
    CLAIM_QUANTUM,
    MAX_ERRORS_KEPT,
    NewOutboxRow,
    OutboxRow,
    Reply,
    check_claim_args,
    check_new_row,
    payload_size,
)
from picloud.config import ConcurrencyConfig
from picloud.db.batches import check_batch_size
from picloud.db.storable import bounded_error


class MemoryOutboxRepo:
    def __init__(self, clock: Callable[[], datetime] = timezone.now) -> None:
        self.clock = clock
        self.rows: dict[uuid.UUID, OutboxRow] = {}
        # What PostgreSQL keeps in outbox.leased_until (absent: NULL).
        self.leased_until: dict[uuid.UUID, datetime] = {}
        # What apps.max_concurrency, scripts.max_concurrency and
        # platform_settings tell PostgreSQL (absent or None: NULL).
        self.app_caps: dict[uuid.UUID, int | None] = {}
        self.script_caps: dict[uuid.UUID, int | None] = {}
        self.platform_cap: int | None = None
        # The script circuits the claim reads (outbox/storage/memory_circuits.py);
        # None: every circuit closed.
        self.circuits: MemoryCircuitRepo | None = None
        # Where attempts acknowledged with a claim or a delete are logged.
        self.delivery_log = MemoryDeliveryLog()
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.rows.clear()
            self.leased_until.clear()

    def insert(self, row: NewOutboxRow) -> OutboxRow:
        check_new_row(row)
        now = self.clock()
        record = OutboxRow(
            id=uuid.uuid4(),
            app_id=row.app_id,
            source_kind=row.source_kind,
            trigger_id=row.trigger_id,
            script_id=row.script_id,
            run_as_principal=row.run_as_principal,
            payload=row.payload,
            depth=row.depth,
            attempts=0,
            due_at=row.due_at or now,
            reply_to=row.reply_to,
            last_error=None,
            errors=(),
            created_at=now,
            payload_bytes=payload_size(row.payload),
        )
        with self._lock:
            self.rows[record.id] = record
        return record

    def get(self, row_id: uuid.UUID) -> OutboxRow | None:
        return self.rows.get(row_id)

    def claim_due(
        self,
        limit: int,
        lease: float,
        *,
        ack: Sequence[uuid.UUID] = (),
        log: Sequence[Acked] = (),
        after_app: uuid.UUID | None = None,
    ) -> list[OutboxRow]:
        check_claim_args(limit, lease)
        self.delete(ack, log=log)
        with self._lock:
            now = self.clock()
            lease_end = now + timedelta(seconds=lease)
            apps = sorted({r.app_id for r in self.rows.values()})
            # The ring of apps with rows, starting after `after_app`.
            start = 0 if after_app is None else bisect.bisect_right(apps, after_app)
            ring = apps[start:] + apps[:start]
            claimed: list[OutboxRow] = []
            # Turns go round until one whole turn takes nothing (as outbox_claim).
            while ring and len(claimed) < limit:
                before = len(claimed)
                for app_id in ring:
                    if len(claimed) >= limit:
                        break
                    for row in self._take(app_id, limit - len(claimed), now):
                        leased = replace(row, attempts=row.attempts + 1, due_at=lease_end)
                        self.rows[row.id] = leased
                        self.leased_until[row.id] = lease_end
                        # Returned with when it was due (see OutboxRepo.claim_due).
                        claimed.append(replace(leased, due_at=row.due_at))
                if len(claimed) == before:
                    break
        return claimed

    def _take(self, app_id: uuid.UUID, remaining: int, now: datetime) -> list[OutboxRow]:
        """One visit: the app's oldest due rows its caps and the quantum allow."""
        cap = (
            self.app_caps.get(app_id)
            or self.platform_cap
            or ConcurrencyConfig.current().app_max_concurrency
        )
        room = cap - sum(r.app_id == app_id for r in self._in_flight(now))
        take = min(CLAIM_QUANTUM, remaining, room)
        if take <= 0:
            return []
        due = sorted(
            (r for r in self.rows.values() if r.app_id == app_id and r.due_at <= now),
            key=lambda r: r.due_at,
        )
        script_room = {}
        for script_id in {r.script_id for r in due}:
            script_cap = self.script_caps.get(script_id)
            if self.circuits is not None:  # 0 while open, 1 while probing
                script_cap = self.circuits.script_cap(script_id, script_cap, now)
            if script_cap is not None:
                in_flight = sum(r.script_id == script_id for r in self._in_flight(now))
                script_room[script_id] = script_cap - in_flight
        taken = []
        for row in due:
            if len(taken) == take:
                break
            if row.script_id in script_room:
                if script_room[row.script_id] <= 0:
                    continue  # its script is at its cap
                script_room[row.script_id] -= 1
            taken.append(row)
        return taken

    def _in_flight(self, now: datetime) -> list[OutboxRow]:
        return [self.rows[i] for i, end in self.leased_until.items() if end > now]

    def delete(self, row_ids: Sequence[uuid.UUID], *, log: Sequence[Acked] = ()) -> int:
        if log:
            self.delivery_log.write(
                [
                    attempt_of_row(self.rows[i], a, "done")
                    for i, a in zip(row_ids, log, strict=True)
                    if i in self.rows
                ]
            )
        with self._lock:
            for row_id in row_ids:
                self.leased_until.pop(row_id, None)
            return sum(self.rows.pop(i, None) is not None for i in set(row_ids))

    def reschedule(
        self, row_id: uuid.UUID, due_at: datetime, error: str, *, attempt: int | None = None
    ) -> bool:
        error = bounded_error(error)
        with self._lock:
            current = self.rows.get(row_id)
            if current is None:
                return False
            if attempt is not None and (
                current.attempts != attempt or row_id not in self.leased_until
            ):
                return False  # no longer the claim that made this attempt
            errors = (*current.errors, error)[-MAX_ERRORS_KEPT:]
            self.rows[row_id] = replace(current, due_at=due_at, last_error=error, errors=errors)
            self.leased_until.pop(row_id, None)
        return True

    def release(self, row_ids: Sequence[uuid.UUID], *, delay: float = 0.0) -> int:
        with self._lock:
            now, released = self.clock() + timedelta(seconds=delay), 0
            for row_id in set(row_ids):
                if (row := self.rows.get(row_id)) is not None:
                    attempts = max(row.attempts - 1, 0)
                    self.rows[row_id] = replace(row, due_at=now, attempts=attempts)
                    self.leased_until.pop(row_id, None)
                    released += 1
            return released

    def run_now(self, row_ids: Sequence[uuid.UUID]) -> int:
        with self._lock:
            now, changed = self.clock(), 0
            for row_id in set(row_ids):
                row = self.rows.get(row_id)
                if row is not None and row.due_at > now and row.attempts == len(row.errors):
                    self.rows[row_id] = replace(row, due_at=now)
                    changed += 1
            return changed

    def next_due_at(self) -> datetime | None:
        return min((r.due_at for r in self.rows.values()), default=None)

    def stats(self) -> tuple[int, datetime | None]:
        now = self.clock()
        due = [r.due_at for r in self.rows.values() if r.due_at <= now]
        return len(due), min(due, default=None)

    def load(self, app_id: uuid.UUID, script_id: uuid.UUID | None = None) -> tuple[int, int]:
        now = self.clock()
        rows = [
            r for r in self.rows.values() if r.app_id == app_id and script_id in (None, r.script_id)
        ]
        in_flight = sum(self.leased_until.get(r.id, now) > now for r in rows)
        return in_flight, sum(r.due_at <= now for r in rows)


class MemoryCounterStore:
    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def add(self, increments: dict[str, int]) -> None:
        for name, value in increments.items():
            if value:
                self.values[name] = self.values.get(name, 0) + value

    def read(self) -> dict[str, int]:
        return dict(self.values)


class MemoryReplyInbox:
    """ReplyInbox in memory. `on_deliver` stands in for the notification."""

    def __init__(
        self,
        clock: Callable[[], datetime] = timezone.now,
        on_deliver: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        self.clock, self.on_deliver = clock, on_deliver
        # inbox id -> (app id, opened at, reply or None)
        self.inboxes: dict[uuid.UUID, tuple[uuid.UUID, datetime, Reply | None]] = {}
        self._lock = threading.Lock()

    def open(self, inbox_id: uuid.UUID, app_id: uuid.UUID) -> None:
        with self._lock:
            if inbox_id in self.inboxes:
                raise ValueError(f"inbox {inbox_id} is already open")
            self.inboxes[inbox_id] = (app_id, self.clock(), None)

    def deliver(self, inbox_id: uuid.UUID, reply: Reply) -> bool:
        with self._lock:
            inbox = self.inboxes.get(inbox_id)
            if inbox is None or inbox[2] is not None:
                return False
            self.inboxes[inbox_id] = (inbox[0], inbox[1], reply)
        if self.on_deliver:
            self.on_deliver(inbox_id)
        return True

    def collect(self, inbox_id: uuid.UUID) -> Reply | None:
        with self._lock:
            inbox = self.inboxes.get(inbox_id)
            if inbox is None or inbox[2] is None:
                return None
            del self.inboxes[inbox_id]
            return inbox[2]

    def close(self, inbox_id: uuid.UUID) -> Reply | None:
        with self._lock:
            inbox = self.inboxes.pop(inbox_id, None)
            return inbox[2] if inbox else None

    def gc(self, older_than: datetime, batch_size: int) -> int:
        check_batch_size(batch_size)
        with self._lock:
            old = [i for i, (_, opened, _) in self.inboxes.items() if opened < older_than]
            for inbox_id in old:
                del self.inboxes[inbox_id]
            return len(old)
