"""What a KV write tells the layers above the store: one event per write.

The store must not know who reacts to its writes (triggers do, today), so
it owns this small interface and the reacting layer registers a listener in
its ``AppConfig.ready``. Listeners run inside the write's transaction: what
they write commits or rolls back with the entry.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class KvEvent:
    app_id: uuid.UUID
    app_slug: str
    collection: str
    key: str
    op: str  # insert | update | delete
    old: Any
    new: Any
    version: int

    def payload(self) -> dict[str, Any]:
        """The event as a trigger's script receives it."""
        data = asdict(self)
        data["app_id"] = str(self.app_id)
        data["app"] = data.pop("app_slug")
        return data


# (event, depth of the write, the outbox row whose script wrote, or None)
WriteListener = Callable[..., object]

_listeners: list[WriteListener] = []


def on_write(listener: WriteListener) -> None:
    """Call `listener(event, depth=..., cause=...)` after every put and delete
    (registering the same listener twice keeps one)."""
    if listener not in _listeners:
        _listeners.append(listener)


def written(event: KvEvent, *, depth: int, cause: uuid.UUID | None) -> None:
    for listener in _listeners:
        listener(event, depth=depth, cause=cause)
