"""What a publish tells the layers above the topics: one event per publish.

Like the KV store's hooks (picloud/kv/hooks.py): topics must not know who
subscribes (pubsub triggers do), so the triggers app registers a listener in
its ``AppConfig.ready``. Listeners run inside the publisher's transaction:
what they write commits or rolls back with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Published:
    app_id: uuid.UUID
    app_slug: str
    topic: str
    message: Any
    message_id: uuid.UUID  # the same for every subscriber: dedupe across triggers by it
    published_at: datetime

    def payload(self) -> dict[str, Any]:
        """The event as a subscriber's script receives it (the trigger's
        name and id are added per subscriber)."""
        return {
            "source": "pubsub",
            "app": self.app_slug,
            "app_id": str(self.app_id),
            "topic": self.topic,
            "message": self.message,
            "message_id": str(self.message_id),
            "published_at": self.published_at.isoformat(),
        }


# (event, depth of the publish, the outbox row whose script published, or
# None) -> how many deliveries it enqueued
PublishListener = Callable[..., int]

_listeners: list[PublishListener] = []


def on_publish(listener: PublishListener) -> None:
    """Call `listener(event, depth=..., cause=...)` after every publish
    (registering the same listener twice keeps one)."""
    if listener not in _listeners:
        _listeners.append(listener)


def published(event: Published, *, depth: int, cause: uuid.UUID | None) -> int:
    return sum(listener(event, depth=depth, cause=cause) or 0 for listener in _listeners)
