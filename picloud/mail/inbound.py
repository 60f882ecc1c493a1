"""Mail that arrived: accepting recipients, storing each message with the
triggers it fires, reading it back, and sweeping it.

    from picloud.mail import inbound
    inbound.accepts("orders@shop.picloud.localhost")        # at RCPT TO
    inbound.receive("a@example.com", ["orders@shop.picloud.localhost"], raw)

``receive`` is what the SMTP receiver calls once a message's data is in:
one transaction stores the raw message for each app its recipients reach
(``inbound_emails``) and writes the outbox rows of each app's matching
email triggers (through picloud/mail/hooks.py); the receiver answers 250
only after it commits. Reading mail back needs EmailRead
(docs/authorization.md).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from picloud.config import EmailConfig, SandboxCeiling
from picloud.db.batches import check_batch_size
from picloud.db.sqlexec import execute, fetch_all, fetch_one, from_json, to_json
from picloud.db.sqlfiles import load_queries
from picloud.db.storable import jsonb_text_size, storable_text
from picloud.domain.authz import Capability, require
from picloud.domain.calls import MAX_SLUG_LENGTH, resolve_app, resolve_principal
from picloud.mail import hooks
from picloud.mail.addresses import Recipient, route
from picloud.mail.parse import Attachment, attachment, parse_message

Q = load_queries("picloud", "email.sql")

MAX_RECIPIENTS = 100  # RCPT TO per message (RFC 5321 asks servers to take at least 100)
MAX_MAIL_FROM_CHARS = 320  # an envelope sender as stored
MAX_SUBJECT_CHARS = 1_000  # the admin's copy; the event has the whole subject
TRIGGER_NAME_CHARS = 200  # a trigger's name at most (triggers.name is VARCHAR(200))
MIN_MESSAGE_BYTES = 16_384  # the parser's smallest budget
SEND_COUNT_KEEP = timedelta(days=1)  # hourly send counts outlive their hour this long
NO_APP = uuid.UUID(int=0)  # an id no app has


class MessageTooLarge(ValidationError):
    def __init__(self, size: int, limit: int):
        super().__init__(
            f"message is {size} bytes, over PICLOUD_EMAIL_MAX_BYTES={limit}", code="too_large"
        )


class EmailNotFound(LookupError):
    pass


@dataclass(frozen=True)
class Stored:
    """A message as stored for one app, and what it fired."""

    email_id: uuid.UUID
    app_id: uuid.UUID
    app_slug: str
    recipients: tuple[Recipient, ...]
    fired: list[dict[str, str]]


@dataclass(frozen=True)
class InboundEmail:
    id: uuid.UUID
    app_id: uuid.UUID
    received_at: datetime
    mail_from: str
    rcpt_to: list[str]
    subject: str
    from_header: str
    message_id: str | None
    size: int
    fired: list[dict[str, str]]
    peer: str


def accepts(address: str, *, config: EmailConfig | None = None) -> Recipient | None:
    """The recipient when mail to `address` would fire an enabled email
    trigger of the app it names, else None (the receiver's 550). One answer
    for an app that does not exist and one that wants no such mail, so the
    refusal tells an outsider nothing about which apps exist."""
    config = config or EmailConfig.current()
    recipient = route(address, config.domain)
    if recipient is None:
        return None
    app = fetch_one(Q["app_by_slug"], {"slug": recipient.app_slug})
    # The same queries whether the app exists or not: how long the answer
    # takes must not tell either.
    wanted = hooks.wanted(app["id"] if app else NO_APP, recipient.local_part)
    return recipient if app is not None and wanted else None


def receive(
    mail_from: str,
    rcpt_to: Sequence[str],
    raw: bytes,
    *,
    peer: str = "",
    config: EmailConfig | None = None,
    ceiling: SandboxCeiling | None = None,
) -> list[Stored]:
    """Store `raw` once for each app among `rcpt_to` and fire each app's
    email triggers that match its recipients, all in one transaction: on
    any error nothing is stored and nothing fires.

    Recipients that are no app's address are left out (the receiver
    refused them already); one accepted earlier whose trigger has been
    disabled since is stored and fires nothing, so what the client was told
    was accepted is never lost. MessageTooLarge over PICLOUD_EMAIL_MAX_BYTES;
    ValidationError for more than MAX_RECIPIENTS recipients."""
    config = config or EmailConfig.current()
    if len(raw) > config.max_bytes:
        raise MessageTooLarge(len(raw), config.max_bytes)
    if not 1 <= len(rcpt_to) <= MAX_RECIPIENTS:
        raise ValidationError(f"give 1 to {MAX_RECIPIENTS} recipients, not {len(rcpt_to)}")
    by_app: dict[str, list[Recipient]] = {}
    for address in dict.fromkeys(rcpt_to):  # each address once, in order
        recipient = route(address, config.domain)
        if recipient is not None:
            by_app.setdefault(recipient.app_slug, []).append(recipient)
    if not by_app:
        return []
    mail_from = storable_text(mail_from, MAX_MAIL_FROM_CHARS)
    peer = storable_text(peer, 200)
    every = [r for recipients in by_app.values() for r in recipients]
    message = parse_message(raw, max_event_bytes=_message_budget(ceiling, mail_from, every))
    stored = []
    with transaction.atomic():
        for slug, recipients in by_app.items():
            app = fetch_one(Q["app_by_slug"], {"slug": slug})
            if app is None:
                continue  # deleted since RCPT TO: nothing of it is left to deliver to
            event = hooks.Received(
                email_id=uuid.uuid4(),
                app_id=app["id"],
                app_slug=slug,
                mail_from=mail_from,
                recipients=tuple(recipients),
                received_at=timezone.now(),
                size=len(raw),
                message=message,
            )
            fired = hooks.received(event)
            execute(Q["email_insert"], _row(event, fired, peer, raw))
            stored.append(Stored(event.email_id, app["id"], slug, event.recipients, fired))
    return stored


def _message_budget(
    ceiling: SandboxCeiling | None, mail_from: str, recipients: list[Recipient]
) -> int:
    """Bytes (as jsonb) the parsed message may take so that every event of
    it stays under the sandbox's payload cap: the cap less the largest
    envelope a trigger's event can have (every recipient, the longest
    trigger name escaped). A cap too small for even the parser's minimum
    gives that minimum: the row then fails its cap check and becomes a dead
    letter, which keeps the message, rather than the receiver refusing it."""
    ceiling = ceiling or SandboxCeiling.current()
    largest = hooks.Received(
        email_id=NO_APP,
        app_id=NO_APP,
        app_slug="x" * MAX_SLUG_LENGTH,
        mail_from=mail_from,
        recipients=tuple(recipients),
        received_at=timezone.now(),
        size=2**31,
        message={},
    ).payload(recipients)
    # A control character is the longest a name's character gets as JSON (\u0001).
    largest |= {"trigger": "\x01" * TRIGGER_NAME_CHARS, "trigger_id": str(NO_APP)}
    return max(MIN_MESSAGE_BYTES, ceiling.max_payload_bytes - jsonb_text_size(largest))


def _row(event: hooks.Received, fired: list, peer: str, raw: bytes) -> dict[str, Any]:
    message = event.message
    sender = message.get("from") or {}
    from_header = (
        f"{sender['name']} <{sender['address']}>" if sender.get("name") else sender.get("address")
    )
    return {
        "id": event.email_id,
        "app_id": event.app_id,
        "received_at": event.received_at,
        "mail_from": event.mail_from,
        "rcpt_to": [r.address for r in event.recipients],
        "subject": (message.get("subject") or "")[:MAX_SUBJECT_CHARS],
        "from_header": (from_header or "")[:MAX_SUBJECT_CHARS],
        "message_id": (message.get("message_id") or "")[:1000] or None,
        "size": event.size,
        "fired": to_json(fired),
        "peer": peer,
        "raw": raw,
    }


def _email(row: dict[str, Any]) -> InboundEmail:
    return InboundEmail(**{**row, "fired": from_json(row["fired"])})


def _readable(query: str, app, email_id, principal) -> dict[str, Any]:
    """The app's message `email_id` read by `query`, once the principal may
    read the app's mail (EmailRead); EmailNotFound, also for a malformed id."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.EmailRead(app.id))
    try:
        found = email_id if isinstance(email_id, uuid.UUID) else uuid.UUID(str(email_id))
    except ValueError:
        found = None
    row = found and fetch_one(Q[query], {"app_id": app.id, "id": found})
    if not row:
        raise EmailNotFound(f"no email {email_id} in app {app.slug!r}")
    return row


def get_email(app, email_id, *, principal) -> InboundEmail:
    """The message's record (not its raw bytes). Needs EmailRead; EmailNotFound."""
    return _email(_readable("email_get", app, email_id, principal))


def list_emails(app, *, principal, limit: int = 50) -> list[InboundEmail]:
    """The app's newest messages first. Needs EmailRead."""
    app = resolve_app(app)
    require(resolve_principal(principal), Capability.EmailRead(app.id))
    if type(limit) is not int or not 1 <= limit <= 1000:
        raise ValidationError({"limit": "Give a limit of 1 to 1000 messages."})
    return [_email(r) for r in fetch_all(Q["emails_of_app"], {"app_id": app.id, "limit": limit})]


def raw_message(app, email_id, *, principal) -> bytes:
    """The message as it arrived. Needs EmailRead; EmailNotFound."""
    return bytes(_readable("email_raw", app, email_id, principal)["raw"])


def get_attachment(app, email_id, index: int, *, principal) -> Attachment:
    """The attachment the event lists with this index. Needs EmailRead;
    EmailNotFound for no such message or attachment."""
    found = attachment(raw_message(app, email_id, principal=principal), index)
    if found is None:
        raise EmailNotFound(f"email {email_id} has no attachment {index}")
    return found


def gc(retention_days: int, batch_size: int = 1000) -> int:
    """Delete mail received more than `retention_days` ago (the ops' sweep,
    PICLOUD_EMAIL_RETENTION_DAYS), in batches, and send counts of hours
    past; how many messages."""
    check_batch_size(batch_size)
    now = timezone.now()
    before = now - timedelta(days=retention_days)
    total = 0
    while n := execute(Q["email_gc"], {"before": before, "limit": batch_size}):
        total += n
    execute(Q["send_counts_gc"], {"before": now - SEND_COUNT_KEEP})
    return total


def gc_count(retention_days: int) -> int:
    """How many messages gc(retention_days) would delete now."""
    before = timezone.now() - timedelta(days=retention_days)
    return fetch_one(Q["email_gc_count"], {"before": before})["n"]  # type: ignore[index]
