"""What arriving mail tells the layers above it: whether a recipient is
wanted, and each message stored for an app.

Like the topics' hooks (picloud/messaging/hooks.py): the receiver must not
know who consumes mail (email triggers do), so the triggers app registers
both in its ``AppConfig.ready``. Receive listeners run inside the
receiver's transaction: the outbox rows they write commit with the stored
message, or neither does.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from picloud.mail.addresses import Recipient


@dataclass(frozen=True)
class Received:
    """One message as stored for one app."""

    email_id: uuid.UUID  # its inbound_emails row
    app_id: uuid.UUID
    app_slug: str
    mail_from: str  # the envelope sender; '' for a bounce
    recipients: tuple[Recipient, ...]  # this app's recipients
    received_at: datetime
    size: int  # bytes, as received
    message: dict[str, Any]  # picloud.mail.parse.parse_message's event

    def payload(self, recipients: list[Recipient]) -> dict[str, Any]:
        """The event a trigger's script receives, for the recipients its
        pattern matched (the trigger's name and id are added per trigger)."""
        return {
            "source": "email",
            "app": self.app_slug,
            "app_id": str(self.app_id),
            "email_id": str(self.email_id),
            "received_at": self.received_at.isoformat(),
            "envelope": {
                "mail_from": self.mail_from,
                "rcpt_to": [r.address for r in recipients],
            },
            "local_parts": sorted({r.local_part for r in recipients}),
            "tags": sorted({r.tag for r in recipients if r.tag is not None}),
            "size": self.size,
            "message": self.message,
        }


# (app id, local part) -> whether some consumer wants mail to it
RecipientCheck = Callable[[uuid.UUID, str], bool]
# (event) -> what it fired: [{"trigger_id": str, "name": str, "outbox_id": str}]
ReceiveListener = Callable[[Received], list[dict[str, str]]]

_checks: list[RecipientCheck] = []
_listeners: list[ReceiveListener] = []


def on_recipient(check: RecipientCheck) -> None:
    """Ask `check(app_id, local_part)` at every RCPT TO (registering the
    same one twice keeps one)."""
    if check not in _checks:
        _checks.append(check)


def on_receive(listener: ReceiveListener) -> None:
    """Call `listener(event)` for every message stored for an app."""
    if listener not in _listeners:
        _listeners.append(listener)


def wanted(app_id: uuid.UUID, local_part: str) -> bool:
    """Whether mail to this app and local part would fire anything; with
    nothing registered, nothing is wanted and every recipient is refused."""
    return any(check(app_id, local_part) for check in _checks)


def received(event: Received) -> list[dict[str, str]]:
    return [fired for listener in _listeners for fired in listener(event)]
