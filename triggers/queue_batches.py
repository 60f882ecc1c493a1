"""Queue triggers' batches in storage: ``fill`` makes outbox rows of visible
messages; ``PgBatchStore.settle`` records one batch's outcome message by
message (outbox/dispatch/queue_settle.py decides what that outcome is).

A batch is one outbox row of source ``queue`` whose id holds its messages
(queue_messages.batch_id) for as long as the row exists: waiting for a
slot, running, or coming back after a lost worker's lease. The outbox
stays the one dispatch substrate (claims, caps, circuits, leases), and the
queue keeps what is per message: receive counts, backoff, dead letters
(docs/messaging.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from django.utils import timezone

from picloud.config import SandboxCeiling
from picloud.db.sqlexec import execute, fetch_all, fetch_one
from picloud.db.sqlfiles import load_queries
from picloud.messaging.names import ENVELOPE_BYTES

Q = load_queries("triggers")


@dataclass(frozen=True)
class FillReport:
    batches: int
    messages: int
    next_at: datetime | None  # when a waiting partial batch or a delayed message is due


# Batches one trigger gets per call at most: a call is one transaction, and
# a hundred batches of a megabyte each would hold it for seconds.
MAX_BATCHES_PER_CALL = 10


def fill(max_bytes: int | None = None) -> FillReport:
    """Write the batches every enabled queue trigger has room and messages
    for (queue_fill_trigger in triggers/sql/0004_pubsub_and_queues.sql),
    one transaction per trigger, so one tenant's batches never wait for
    another's. A batch's event stays under `max_bytes` (default: the
    sandbox's payload cap, less an envelope's worth). Must run outside a
    transaction (in autocommit), as the dispatcher host does."""
    if max_bytes is None:
        max_bytes = SandboxCeiling.current().max_payload_bytes - ENVELOPE_BYTES
    batches = messages = 0
    next_at: datetime | None = None
    for candidate in fetch_all(Q["queue_triggers_with_messages"]):
        row = fetch_one(
            Q["fill_queue_trigger"],
            {
                "trigger_id": candidate["trigger_id"],
                "max_bytes": max_bytes,
                "max_batches": MAX_BATCHES_PER_CALL,
            },
        )
        batches += row["batches"]  # type: ignore[index]
        messages += row["messages"]  # type: ignore[index]
        due = row["next_at"]  # type: ignore[index]
        if row["batches"] == MAX_BATCHES_PER_CALL:  # type: ignore[index]
            due = timezone.now()  # it may have room for more: look again at once
        if due is not None and (next_at is None or due < next_at):
            next_at = due
    return FillReport(batches, messages, next_at)


def release_orphans() -> int:
    """Messages held by a batch whose outbox row is gone (its trigger was
    deleted, say) become visible again; how many."""
    return execute(Q["release_orphaned_batches"])


@dataclass(frozen=True)
class Retry:
    id: int
    delay_ms: int
    receives: int  # the message's receive count, lost workers' deliveries included


class BatchStore(Protocol):
    def settle(
        self,
        batch: uuid.UUID,
        attempt: int,
        done: Sequence[int],
        retry: Sequence[Retry],
        dead: Sequence[int],
    ) -> list[int] | None:
        """In the caller's transaction: delete `done`, make `retry` visible
        after their delays, delete `dead` and return those it deleted (the
        caller writes their dead letters), release anything else the batch
        held, and delete the batch's outbox row — only while that row is
        still the claim that made `attempt`. None when it is not: a batch
        already settled (or deleted with its trigger) changes nothing but
        releasing what it still held; a batch claimed again elsewhere
        changes nothing at all."""


class PgBatchStore:
    def settle(self, batch, attempt, done, retry, dead) -> list[int] | None:
        row = fetch_one(
            Q["settle_queue_batch"],
            {
                "batch": batch,
                "attempt": attempt,
                "done": list(done),
                "retry": [r.id for r in retry],
                "retry_delay_ms": [r.delay_ms for r in retry],
                "retry_count": [r.receives for r in retry],
                "dead": list(dead),
            },
        )
        dead_ids = row["dead"]  # type: ignore[index]
        return None if dead_ids is None else list(dead_ids)
