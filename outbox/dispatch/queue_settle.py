"""What a queue batch's outcome means for each of its messages.

A handler that returns normally consumed its batch, except the messages its
result reports as failed: ``{"failed": [<message id>, ...]}`` (ids as
numbers or digit strings). Only those are retried (partial batch failure).
A handler that raises, times out or answers a retryable error fails the
whole batch. A failed message goes back on its queue, visible after the
trigger's backoff for its receive count, until it has been received
max_receives times; then it is deleted and becomes a dead letter with the
queue as its source. A failure retrying cannot fix (unauthorized, a
permanent error, a malformed report...) makes dead letters at once: nothing
is dropped, and a replay puts each message back on its queue.

A batch whose worker was lost comes back from the outbox with one attempt
more: each of its messages counts that delivery as a receive.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from deadletters.repository import NewDeadLetter
from outbox.dispatch.backoff import policy_for, retry_delay
from outbox.storage.kinds import SourceKind
from outbox.storage.repository import OutboxRow
from picloud.config import TriggerConfig
from picloud.runtime.execution import Failure, Outcome
from triggers.fanout import FanOut
from triggers.queue_batches import BatchStore, Retry
from triggers.repository import QueueSpec, TriggerRepo

FAILED_KEY = "failed"  # the handler's report: {"failed": [ids]}
REPORTED = "the handler reported this message as failed"


def reported_failures(result: Any, ids: set[int]) -> set[int] | str:
    """The ids of this batch a handler's result reports as failed (none when
    it reports nothing), or a string saying why the report is malformed."""
    if not isinstance(result, dict) or result.get(FAILED_KEY) is None:
        return set()
    failed = result[FAILED_KEY]
    if not isinstance(failed, list):
        return (
            f"malformed report: {FAILED_KEY!r} must be a list of message ids, "
            f"got {type(failed).__name__}"
        )
    out: set[int] = set()
    for item in failed:
        if isinstance(item, int) and not isinstance(item, bool):
            value = item
        elif isinstance(item, str) and item.isascii() and item.isdigit() and len(item) < 20:
            value = int(item)
        else:
            return f"malformed report: {str(item)[:40]!r} in {FAILED_KEY!r} is not a message id"
        if value not in ids:
            return f"malformed report: message {value} is not in this batch"
        out.add(value)
    return out


@dataclass
class Plan:
    """What becomes of each message of a batch."""

    done: list[int] = field(default_factory=list)
    retry: list[Retry] = field(default_factory=list)
    dead: list[tuple[dict, int, str]] = field(default_factory=list)  # (message, receives, error)


def plan(
    messages: Sequence[dict],
    outcome: Outcome,
    *,
    extra_receives: int,
    spec: QueueSpec | None,
    delay_for: Callable[[int], float],
) -> Plan:
    """Decide each message's fate. `extra_receives`: deliveries of this
    batch beyond its first (lost workers); `delay_for(receives)`: seconds of
    backoff after that many receives; `spec`: the trigger's settings (None:
    read only when some message failed, and the defaults when it is gone)."""
    ids = {m["id"] for m in messages}
    plan_ = Plan()
    if outcome.ok:
        failed = reported_failures(outcome.result, ids)  # type: ignore[union-attr]
        if isinstance(failed, str):
            failed, error, retryable = ids, failed, False
        else:
            error, retryable = REPORTED, True
    else:
        assert isinstance(outcome, Failure)
        failed, error, retryable = ids, outcome.error, outcome.retryable
    max_receives = (spec or QueueSpec(queue_id=uuid.UUID(int=0))).max_receives
    for message in messages:
        receives = int(message.get("receive_count") or 1) + extra_receives
        if message["id"] not in failed:
            plan_.done.append(message["id"])
        elif retryable and receives < max_receives:
            delay_ms = round(delay_for(receives) * 1000)
            plan_.retry.append(Retry(message["id"], delay_ms, receives))
        else:
            why = error
            if retryable:
                why = f"{error} (receive {receives} of max_receives={max_receives})"
            plan_.dead.append((message, receives, why))
    return plan_


def batch_messages(row: OutboxRow) -> list[dict]:
    """The messages a batch row carries (written by queue_fill_trigger)."""
    payload = row.payload if isinstance(row.payload, dict) else {}
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return []
    return [m for m in messages if isinstance(m, dict) and isinstance(m.get("id"), int)]


class QueueSettler:
    def __init__(
        self,
        *,
        triggers: TriggerRepo,
        fan_out: FanOut,
        store: BatchStore,
        config: TriggerConfig,
        atomic: Callable[[], AbstractContextManager] = nullcontext,
        rand: Callable[[], float] = random.random,
        settled: Callable[[], None] = lambda: None,
    ) -> None:
        self.triggers, self.fan_out, self.store = triggers, fan_out, store
        self.config, self.atomic, self.rand, self.settled = config, atomic, rand, settled

    def settle(
        self,
        row: OutboxRow,
        outcome: Outcome,
        *,
        log: Callable[[int, int], None] | None = None,
    ) -> int:
        """Record the batch's outcome message by message and delete its row,
        in one transaction; returns the dead letters written. `log(dead,
        retried)` is called in that transaction, once its fate is known
        (the delivery log's entry goes with it), and not at all when the row
        is no longer this claim's (settled already: a settle repeated after
        its COMMIT's answer was lost is neither applied nor logged twice)."""
        messages = batch_messages(row)
        trigger = None
        if not outcome.ok or (
            isinstance(outcome.result, dict) and outcome.result.get(FAILED_KEY)  # type: ignore[union-attr]
        ):
            trigger = self.triggers.get(row.trigger_id) if row.trigger_id else None
        policy = policy_for(trigger, self.config.retry)
        decided = plan(
            messages,
            outcome,
            extra_receives=max(row.attempts - 1, 0),
            spec=trigger.queue if trigger else None,
            delay_for=lambda receives: retry_delay(receives, policy, self.rand),
        )
        dead_ids = [m["id"] for m, _, _ in decided.dead]
        with self.atomic():
            settled = self.store.settle(row.id, row.attempts, decided.done, decided.retry, dead_ids)
            if settled is None:
                return 0
            gone = set(settled)
            written = 0
            for message, receives, error in decided.dead:
                if message["id"] in gone:
                    written += self._dead_letter(row, message, receives, error)
            if log is not None:
                log(written, len(decided.retry))
        self.settled()
        return written

    def _dead_letter(self, row: OutboxRow, message: dict, receives: int, error: str) -> int:
        envelope = {k: v for k, v in row.payload.items() if k != "messages"}
        record = self.fan_out.dead_letter(
            NewDeadLetter(
                app_id=row.app_id,
                source_kind=SourceKind.QUEUE,
                script_id=row.script_id,
                trigger_id=row.trigger_id,
                run_as_principal=row.run_as_principal,
                outbox_id=row.id,
                payload={**envelope, "message": message},
                last_error=error,
                errors=(error,),
                attempts=receives,
                depth=row.depth,
            )
        )
        return int(record is not None)
