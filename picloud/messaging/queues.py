"""Queues: per-app named queues of JSON messages, with pgmq's semantics.

    from picloud.messaging import queues
    queues.create_queue(app, "emails", principal=admin)
    queues.send(app, "emails", {"to": "a@example.com"}, principal=developer)
    for m in queues.receive(app, "emails", principal=worker, visibility_timeout=30):
        ...  # then
        queues.ack(app, "emails", [m.id], principal=worker)

A received message is hidden for its visibility timeout and comes back
(receive count + 1) unless acknowledged; ``nack`` gives it back sooner.
Messages nobody consumed are deleted after PICLOUD_QUEUE_RETENTION_DAYS
(``gc``). A queue trigger consumes a queue in batches instead
(docs/messaging.md); the messages its batches hold are not visible here.
Capabilities: QueueSend to send, QueueConsume to receive/ack/nack,
QueueRead to list and see stats, AppManageMessaging to create, delete and
purge (docs/authorization.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from picloud.config import TriggerConfig
from picloud.db.batches import check_batch_size
from picloud.db.sqlexec import execute, fetch_all, fetch_one, from_json
from picloud.db.sqlfiles import load_queries
from picloud.domain.authz import Capability, require
from picloud.domain.calls import resolve_app, resolve_principal
from picloud.messaging.names import check_message, possible_name, validate_name
from picloud.messaging.topics import NameTaken
from picloud.models import App

Q = load_queries("picloud", "messaging.sql")

MAX_SEND_BATCH = 1000  # messages one send_batch takes
MAX_RECEIVE = 100  # messages one receive returns at most
MAX_DELAY_S = 43_200  # seconds (12 hours): the longest delay, visibility timeout or nack delay
MAX_IDS = 1000  # ids one ack or nack takes
# triggers/sql/0004_pubsub_and_queues.sql: a queue trigger's key to its queue.
CONSUMER_CONSTRAINT = "queue_trigger_details_queue_same_app_fkey"


@dataclass(frozen=True)
class Queue:
    id: uuid.UUID
    app_id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True)
class Message:
    id: int
    body: Any
    receive_count: int
    sent_at: datetime
    visible_at: datetime  # when it becomes visible again unless acknowledged


@dataclass(frozen=True)
class QueueStats:
    depth: int  # every message
    visible: int  # ready to receive now
    delayed: int  # sent with a delay not over yet
    in_flight: int  # held by a batch, or received and not visible again yet
    oldest_sent_at: datetime | None


class QueueNotFound(LookupError):
    def __init__(self, app: App, name: str):
        super().__init__(f"no queue {name!r} in app {app.slug!r}; create it first")


class QueueInUse(ValidationError):
    def __init__(self, app: App, name: str):
        super().__init__(
            f"Queue {name!r} of app {app.slug!r} has a queue trigger consuming it; delete the "
            "trigger (or point it at another queue) first."
        )


class CascadeStopped(ValidationError):
    """A script's send past PICLOUD_MAX_TRIGGER_DEPTH."""


def create_queue(app, name: str, *, principal) -> Queue:
    """Needs AppManageMessaging. NameTaken when the app has one of that name."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.AppManageMessaging(app.id))
    row = fetch_one(Q["queue_create"], {"app_id": app.id, "name": validate_name("queue", name)})
    if row is None:
        raise NameTaken("queue", app, name)
    return Queue(**row)


def delete_queue(app, name: str, *, principal) -> bool:
    """Delete the queue and its messages. Needs AppManageMessaging. Refused
    (ValidationError) while a queue trigger consumes it: delete or change
    the trigger first."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.AppManageMessaging(app.id))
    if not possible_name(name):
        return False
    try:
        with transaction.atomic():
            # The key is checked at commit (so deleting an app works); here
            # at once, so the refusal comes now even inside a transaction.
            execute(f"SET CONSTRAINTS {CONSUMER_CONSTRAINT} IMMEDIATE")
            deleted = execute(Q["queue_delete"], {"app_id": app.id, "name": name}) > 0
    except IntegrityError as exc:
        if CONSUMER_CONSTRAINT not in str(exc):
            raise
        raise QueueInUse(app, name) from None
    finally:
        if transaction.get_connection().in_atomic_block:
            execute(f"SET CONSTRAINTS {CONSUMER_CONSTRAINT} DEFERRED")
    return deleted


def list_queues(app, *, principal) -> list[Queue]:
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.QueueRead(app.id))
    return [Queue(**r) for r in fetch_all(Q["queues_of_app"], {"app_id": app.id})]


def get_queue(app: App, name: str) -> Queue:
    """The queue (no capability check: the caller's); QueueNotFound."""
    if not possible_name(name):
        raise QueueNotFound(app, str(name)[:200])
    row = fetch_one(Q["queue_get"], {"app_id": app.id, "name": name})
    if row is None:
        raise QueueNotFound(app, name)
    return Queue(**row)


def send(app, queue: str, message: Any, *, principal, delay: float = 0, depth: int = 0) -> int:
    """Put one message on the queue, visible after `delay` seconds; its id.
    Needs QueueSend."""
    return send_batch(app, queue, [message], principal=principal, delay=delay, depth=depth)[0]


def send_batch(
    app,
    queue: str,
    messages: Sequence[Any],
    *,
    principal,
    delay: float = 0,
    depth: int = 0,
) -> list[int]:
    """Put the messages on the queue in one statement (all or none); their
    ids in order. Needs QueueSend. ValidationError naming the first message
    that cannot be stored or is too large, or an out-of-range delay.

    `depth` is set by the client a script receives (its row's depth + 1):
    past PICLOUD_MAX_TRIGGER_DEPTH the send is refused (CascadeStopped), so
    scripts feeding queues that feed them cannot loop for ever."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.QueueSend(app.id))
    if isinstance(messages, str | bytes | dict) or not isinstance(messages, Iterable):
        raise ValidationError({"messages": "Give a list of messages."})
    messages = list(messages)
    if not 1 <= len(messages) <= MAX_SEND_BATCH:
        raise ValidationError(
            {"messages": f"Send 1 to {MAX_SEND_BATCH} messages at once; got {len(messages)}."}
        )
    bodies = []
    for n, message in enumerate(messages):
        try:
            bodies.append(check_message(message))
        except ValidationError as exc:
            which = f"message {n}: " if len(messages) > 1 else ""
            raise type(exc)({"message": which + exc.message_dict["message"][0]}) from None
    delay = _seconds("delay", delay)
    limit = TriggerConfig.current().max_trigger_depth
    if depth > limit:
        raise CascadeStopped(
            {
                "depth": f"depth limit stopped a cascade: a send to queue {queue!r} at depth "
                f"{depth} exceeds PICLOUD_MAX_TRIGGER_DEPTH={limit}"
            }
        )
    found = get_queue(app, queue)
    rows = fetch_all(
        Q["queue_send"], {"queue_id": found.id, "bodies": bodies, "delay": delay, "depth": depth}
    )
    return [r["id"] for r in rows]


def receive(
    app, queue: str, *, principal, visibility_timeout: float = 30, count: int = 1
) -> list[Message]:
    """Up to `count` visible messages, earliest visible first, each hidden
    for `visibility_timeout` seconds and its receive counted. Needs
    QueueConsume. Two consumers never receive the same visible message."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.QueueConsume(app.id))
    if type(count) is not int or not 1 <= count <= MAX_RECEIVE:
        raise ValidationError({"count": f"Allowed: an integer from 1 to {MAX_RECEIVE}."})
    vt = _seconds("visibility_timeout", visibility_timeout)
    found = get_queue(app, queue)
    rows = fetch_all(Q["queue_receive"], {"queue_id": found.id, "count": count, "vt": vt})
    messages = [
        Message(r["id"], from_json(r["body"]), r["receive_count"], r["sent_at"], r["vt"])
        for r in rows
    ]
    return sorted(messages, key=lambda m: (m.visible_at, m.id))


def ack(app, queue: str, ids: Sequence[int], *, principal) -> list[int]:
    """Delete these messages (done with them); the ids that existed. Needs
    QueueConsume. Messages a queue trigger's batch holds are left to it."""
    return _by_ids("queue_ack", app, queue, ids, principal, {})


def nack(app, queue: str, ids: Sequence[int], *, principal, delay: float = 0) -> list[int]:
    """Give these messages back: visible again after `delay` seconds (their
    receive count stays). Needs QueueConsume."""
    return _by_ids("queue_nack", app, queue, ids, principal, {"delay": _seconds("delay", delay)})


def purge(app, queue: str, *, principal) -> int:
    """Delete every message of the queue; how many. Needs AppManageMessaging."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.AppManageMessaging(app.id))
    return execute(Q["queue_purge"], {"queue_id": get_queue(app, queue).id})


def stats(app, queue: str, *, principal) -> QueueStats:
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.QueueRead(app.id))
    return queue_stats(get_queue(app, queue).id)


def queue_stats(queue_id: uuid.UUID) -> QueueStats:
    """A queue's counts (no capability check: admin scopes its pages itself)."""
    return QueueStats(**fetch_one(Q["queue_stats"], {"queue_id": queue_id}))  # type: ignore[arg-type]


def requeue(app_id: uuid.UUID, queue_id: uuid.UUID, body: Any, depth: int) -> int | None:
    """Put `body` back on the app's queue as a new message at `depth` (a
    dead letter's replay); None when the queue is gone. ValidationError when
    the body can no longer be sent (the payload cap was lowered since).
    Joins the caller's transaction."""
    params = {"app_id": app_id, "queue_id": queue_id, "body": check_message(body), "depth": depth}
    row = fetch_one(Q["queue_requeue"], params)
    return None if row is None else row["id"]


def gc(retention_days: int, batch_size: int = 1000) -> int:
    """Delete messages sent more than `retention_days` ago (the ops' sweep,
    PICLOUD_QUEUE_RETENTION_DAYS), in batches; how many."""
    check_batch_size(batch_size)
    before = timezone.now() - timedelta(days=retention_days)
    total = 0
    while n := execute(Q["queue_gc"], {"before": before, "limit": batch_size}):
        total += n
    return total


def gc_count(retention_days: int) -> int:
    """How many messages gc(retention_days) would delete now."""
    before = timezone.now() - timedelta(days=retention_days)
    return fetch_one(Q["queue_gc_count"], {"before": before})["n"]  # type: ignore[index]


def _by_ids(query: str, app, queue: str, ids, principal, extra: dict) -> list[int]:
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.QueueConsume(app.id))
    ids = _ids(ids)
    found = get_queue(app, queue)
    with transaction.atomic():
        rows = fetch_all(Q[query], {"queue_id": found.id, "ids": ids, **extra})
    return sorted(r["id"] for r in rows)


def _ids(ids: object) -> list[int]:
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        raise ValidationError({"ids": "Give a list of message ids."})
    ids = list(ids)
    if not 1 <= len(ids) <= MAX_IDS or any(type(i) is not int or not 1 <= i < 2**63 for i in ids):
        raise ValidationError({"ids": f"Give 1 to {MAX_IDS} message ids, each a positive integer."})
    return ids


def _seconds(field: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 <= value <= MAX_DELAY_S
    ):
        raise ValidationError(
            {field: f"Allowed: 0 to {MAX_DELAY_S} seconds (12 hours); got {value!r}."}
        )
    return float(value)


class QueueClient:
    """The queue API bound to one app and principal; scripts get one as
    ``ctx.queues``. Sends carry the script's depth + 1."""

    def __init__(self, app: App, principal, *, depth: int = 0):
        self.app, self.principal, self.depth = app, principal, depth

    def send(self, queue: str, message: Any, *, delay: float = 0) -> int:
        return send(
            self.app, queue, message, principal=self.principal, delay=delay, depth=self.depth
        )

    def send_batch(self, queue: str, messages: Sequence[Any], *, delay: float = 0) -> list[int]:
        return send_batch(
            self.app, queue, messages, principal=self.principal, delay=delay, depth=self.depth
        )

    def receive(self, queue: str, *, visibility_timeout: float = 30, count: int = 1):
        return receive(
            self.app,
            queue,
            principal=self.principal,
            visibility_timeout=visibility_timeout,
            count=count,
        )

    def ack(self, queue: str, ids: Sequence[int]) -> list[int]:
        return ack(self.app, queue, ids, principal=self.principal)

    def nack(self, queue: str, ids: Sequence[int], *, delay: float = 0) -> list[int]:
        return nack(self.app, queue, ids, principal=self.principal, delay=delay)
