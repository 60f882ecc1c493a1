"""Topics: publish a message that every subscribed pubsub trigger receives.

    from picloud.messaging import topics
    topics.create_topic(app, "orders:created", principal=admin)
    topics.publish(app, "orders:created", {"id": 7}, principal=developer)

A topic must exist before anyone publishes to it (a typo is refused, not
published to nobody). Publishing fans out in the caller's transaction
(picloud/messaging/hooks.py; the triggers app writes one outbox row per
matching trigger): if it rolls back, nothing was published. Capabilities:
TopicPublish to publish, QueueRead to list, AppManageMessaging to create and
delete (docs/authorization.md).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from picloud.db.sqlexec import execute, fetch_all, fetch_one, from_json
from picloud.db.sqlfiles import load_queries
from picloud.domain.authz import Capability, require
from picloud.domain.calls import resolve_app, resolve_principal
from picloud.messaging import hooks
from picloud.messaging.names import check_message, possible_name, validate_name
from picloud.models import App

Q = load_queries("picloud", "messaging.sql")


@dataclass(frozen=True)
class Topic:
    id: uuid.UUID
    app_id: uuid.UUID
    name: str
    created_at: datetime


@dataclass(frozen=True)
class PublishResult:
    message_id: uuid.UUID
    deliveries: int  # outbox rows written: one per matching enabled pubsub trigger


class TopicNotFound(LookupError):
    def __init__(self, app: App, name: str):
        super().__init__(f"no topic {name!r} in app {app.slug!r}; create it first")


class NameTaken(ValidationError):
    def __init__(self, what: str, app: App, name: str):
        super().__init__({"name": f"App {app.slug!r} already has a {what} named {name!r}."})


def create_topic(app, name: str, *, principal) -> Topic:
    """Needs AppManageMessaging. NameTaken when the app has one of that name."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.AppManageMessaging(app.id))
    row = fetch_one(Q["topic_create"], {"app_id": app.id, "name": validate_name("topic", name)})
    if row is None:
        raise NameTaken("topic", app, name)
    return Topic(**row)


def delete_topic(app, name: str, *, principal) -> bool:
    """Needs AppManageMessaging. Deliveries already enqueued still run."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.AppManageMessaging(app.id))
    return possible_name(name) and execute(Q["topic_delete"], {"app_id": app.id, "name": name}) > 0


def list_topics(app, *, principal) -> list[Topic]:
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.QueueRead(app.id))
    return [Topic(**r) for r in fetch_all(Q["topics_of_app"], {"app_id": app.id})]


def get_topic(app: App, name: str) -> Topic:
    """The topic (no capability check: the caller's); TopicNotFound."""
    if not possible_name(name):
        raise TopicNotFound(app, str(name)[:200])
    row = fetch_one(Q["topic_get"], {"app_id": app.id, "name": name})
    if row is None:
        raise TopicNotFound(app, name)
    return Topic(**row)


def publish(
    app,
    topic: str,
    message: Any,
    *,
    principal,
    depth: int = 0,
    cause: uuid.UUID | None = None,
) -> PublishResult:
    """Deliver `message` to every enabled pubsub trigger of the app whose
    pattern matches `topic`, in the caller's transaction. Needs TopicPublish.

    TopicNotFound for a topic the app does not have; ValidationError for a
    message that is not storable JSON (MessageTooLarge over its limit).
    `depth` and `cause` are set by the client a script receives."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.TopicPublish(app.id))
    text = check_message(message)
    found = get_topic(app, topic)
    event = hooks.Published(
        app_id=app.id,
        app_slug=app.slug,
        topic=found.name,
        message=from_json(text),
        message_id=uuid.uuid4(),
        published_at=timezone.now(),
    )
    with transaction.atomic():
        deliveries = hooks.published(event, depth=depth, cause=cause)
    return PublishResult(event.message_id, deliveries)


class TopicClient:
    """Publishing bound to one app and principal; scripts get one as
    ``ctx.topics``. Publishes carry the cascade depth and the causing row,
    so a chain of script-made publishes stops at PICLOUD_MAX_TRIGGER_DEPTH."""

    def __init__(self, app: App, principal, *, depth: int = 0, cause: uuid.UUID | None = None):
        self.app, self.principal, self.depth, self.cause = app, principal, depth, cause

    def publish(self, topic: str, message: Any) -> PublishResult:
        return publish(
            self.app, topic, message, principal=self.principal, depth=self.depth, cause=self.cause
        )
