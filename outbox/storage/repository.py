"""The OutboxRepo contract: what every outbox store guarantees.

Implementations: ``PgOutboxRepo`` (pg_repository.py) and ``MemoryOutboxRepo``
(memory_repository.py); tests/contract holds them to the same behaviour.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol

from outbox.storage.delivery_log import Acked
from outbox.storage.kinds import SourceKind

MAX_ERRORS_KEPT = 100  # attempts whose errors are kept (= the highest max_attempts)
# Rows a claim takes at most from one app per visit: a claim of 100 rows
# serves at least 4 apps when that many have due rows. (10 cost a busy
# single app a third of its throughput in visits: benchmarks, docs/dispatcher.md.)
CLAIM_QUANTUM = 25


@dataclass(frozen=True)
class NewOutboxRow:
    app_id: uuid.UUID
    source_kind: str
    script_id: uuid.UUID
    run_as_principal: uuid.UUID | None
    payload: dict[str, Any] = field(default_factory=dict)
    trigger_id: uuid.UUID | None = None
    depth: int = 0
    reply_to: uuid.UUID | None = None
    due_at: datetime | None = None  # None: due now


@dataclass(frozen=True)
class OutboxRow:
    id: uuid.UUID
    app_id: uuid.UUID
    source_kind: str
    trigger_id: uuid.UUID | None
    script_id: uuid.UUID
    run_as_principal: uuid.UUID | None
    payload: dict[str, Any]
    depth: int
    attempts: int
    due_at: datetime
    reply_to: uuid.UUID | None
    last_error: str | None
    errors: tuple[str, ...]
    created_at: datetime
    # Size of the payload as stored (JSON text, bytes): the sandbox's payload
    # cap reads this instead of encoding every payload again.
    payload_bytes: int = field(default=0, compare=False)

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> OutboxRow:
        """A record from values in field order, already of the right types.

        The dispatcher makes one per claimed row; a frozen dataclass's
        __init__ sets each field through object.__setattr__ (1.7 us for
        these 15), filling __dict__ at once costs a fraction of that.
        """
        record = object.__new__(cls)
        record.__dict__.update(zip(_OUTBOX_ROW_FIELDS, values, strict=True))
        return record


_OUTBOX_ROW_FIELDS = tuple(f.name for f in fields(OutboxRow))


class OutboxRepo(Protocol):
    def insert(self, row: NewOutboxRow) -> OutboxRow:
        """Add a row, due at `row.due_at` (default now), attempts 0.

        Joins the caller's transaction, so an event and its rows commit or
        roll back together. ValueError for an unknown source kind or a
        negative depth.
        """

    def get(self, row_id: uuid.UUID) -> OutboxRow | None:
        """The row, or None."""

    def claim_due(
        self,
        limit: int,
        lease: float,
        *,
        ack: Sequence[uuid.UUID] = (),
        log: Sequence[Acked] = (),
        after_app: uuid.UUID | None = None,
    ) -> list[OutboxRow]:
        """Atomically take up to `limit` due rows, fairly across apps and
        under the concurrency caps: bump their attempts and push their
        lease `lease` seconds ahead (the visibility timeout; the rows are in
        flight until then), and return them as updated, except for due_at,
        which is when each row was due before this claim (how late it
        starts is measured from it). Rows in `ack` are deleted in the same
        statement (acknowledging the last batch); `log`, when given, holds
        their attempts in the same order, which go to the delivery log in
        that statement (each row's ids, kind, attempt and event key come
        from the row as it is deleted).

        Fairness: the apps that have rows take turns in app_id order,
        starting after `after_app` (the app of the last row this claimer got;
        None: the first app) and wrapping around; each visit takes at most
        CLAIM_QUANTUM of the app's due rows, oldest due first, and turns go
        round again until `limit` rows are taken or no app can give more.
        Rows come back in claim order, so the last row's app_id is the next
        `after_app`.

        Caps: an app never has more rows in flight than its max_concurrency,
        else the platform setting, else PICLOUD_APP_MAX_CONCURRENCY; a
        script with a max_concurrency never more than that. Rows over a cap
        stay where they are until a slot frees (ack, reschedule, release or
        a lease running out).

        Concurrent callers never receive the same row while its lease runs; a
        row whose lease ran out (its worker died) is claimable again. Must be
        called outside a transaction so the claim commits before execution.
        """

    def delete(self, row_ids: Sequence[uuid.UUID], *, log: Sequence[Acked] = ()) -> int:
        """Acknowledge rows: delete them in one statement, which also logs
        their attempts when `log` holds them (as claim_due); returns how many existed."""

    def reschedule(
        self, row_id: uuid.UUID, due_at: datetime, error: str, *, attempt: int | None = None
    ) -> bool:
        """Make the row due at `due_at` (no longer in flight), record `error` as last_error and append
        it (truncated to MAX_ERROR_CHARS) to errors, keeping the last
        MAX_ERRORS_KEPT. False if the row is gone. With `attempt`, only
        while the row is still the claim that made that attempt (it holds
        that many attempts and its lease): False once it was rescheduled,
        released or claimed again, so a settle repeated after a lost COMMIT
        answer changes (and logs) nothing."""

    def release(self, row_ids: Sequence[uuid.UUID], *, delay: float = 0.0) -> int:
        """Give claimed rows back unexecuted: due now (or `delay` seconds
        from now), no longer in flight, and the claim's attempt uncounted
        (attempts - 1, never below 0). Returns how many existed."""

    def run_now(self, row_ids: Sequence[uuid.UUID]) -> int:
        """Make waiting rows due now (an operator's "run now"). Rows being
        executed at this moment (claimed: one attempt more than recorded
        errors) are left alone, or they would run twice at once. Returns how
        many were changed."""

    def next_due_at(self) -> datetime | None:
        """The earliest due_at of any row (due or not), or None when empty."""

    def stats(self) -> tuple[int, datetime | None]:
        """(rows due now, the oldest due_at among them or None)."""

    def load(self, app_id: uuid.UUID, script_id: uuid.UUID | None = None) -> tuple[int, int]:
        """(rows in flight, rows due now) of the app, or of its script when given."""


@dataclass(frozen=True)
class Reply:
    """What a synchronous caller receives: an HTTP status and a JSON body."""

    status: int
    body: Any


class ReplyInbox(Protocol):
    """Reply inboxes of synchronous invocations; the row that settles the race
    between a dispatcher delivering and a waiter giving up (see
    outbox/sql/0003_reply_inboxes.sql). For each inbox exactly one of these
    holds: ``deliver`` returned True and the waiter's ``collect``/``close``
    returned the reply, or ``deliver`` returned False (nobody will see it)."""

    def open(self, inbox_id: uuid.UUID, app_id: uuid.UUID) -> None:
        """Open an inbox; joins the caller's transaction (commit it with the
        outbox row that names it)."""

    def deliver(self, inbox_id: uuid.UUID, reply: Reply) -> bool:
        """Store the reply and wake the waiter. False when the inbox is closed
        or gone (the waiter left) or already holds a reply."""

    def collect(self, inbox_id: uuid.UUID) -> Reply | None:
        """Take the reply and remove the inbox; None while none has arrived
        (the inbox stays open)."""

    def close(self, inbox_id: uuid.UUID) -> Reply | None:
        """The waiter leaves: remove the inbox, returning the reply if it had
        arrived. After this, ``deliver`` returns False."""

    def gc(self, older_than: datetime, batch_size: int) -> int:
        """Remove inboxes opened before `older_than` (their waiters died), in
        batches; returns how many."""


def check_new_row(row: NewOutboxRow) -> None:
    if row.source_kind not in SourceKind.values:
        raise ValueError(
            f"unknown source kind {row.source_kind!r}; allowed: {', '.join(SourceKind.values)}"
        )
    if row.depth < 0:
        raise ValueError(f"depth must be >= 0, got {row.depth}")


def check_claim_args(limit: int, lease: float) -> None:
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not lease > 0:
        raise ValueError(f"lease must be > 0 seconds, got {lease}")


def payload_size(payload: Any) -> int:
    return len(json.dumps(payload, separators=(",", ":")).encode())
