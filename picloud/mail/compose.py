"""A message a script sends, checked and put in the shape its outbox row holds.

Everything here comes from a tenant's script, and the answer of ``reply``
partly from an outsider's mail: no value may start a header of its own.
Python's email package ends a header line at CR and LF and also at every
other character ``str.splitlines`` breaks on (vertical tab, form feed,
the file and group separators, NEL, U+2028...), so those and every control
character are refused in anything that becomes a header.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from email.headerregistry import Address
from email.utils import getaddresses
from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from picloud.db.storable import is_storable_text, jsonb_text_size
from picloud.mail.addresses import app_domain, is_app_address, mail_capable

MAX_RECIPIENTS = 50  # to + cc + bcc of one message
MAX_REPLY_TO = 10  # Reply-To addresses of one message
MAX_SUBJECT_CHARS = 998  # RFC 5322's line limit
MAX_HEADERS = 20  # extra X- headers of one message
MAX_HEADER_CHARS = 998
MAX_ADDRESS_CHARS = 320  # one address with its display name
DEFAULT_LOCAL_PART = "noreply"
# A Message-ID worth repeating in In-Reply-To and References: RFC 5322's
# msg-id, visible ASCII only, short enough for one header line.
MESSAGE_ID = re.compile(r"<[\x21-\x3b\x3d\x3f-\x7e]{1,250}>")
MAX_REFERENCES = 20  # the thread's latest ids a reply carries

# What may not appear in a header's value: controls (C0 but tab, DEL, C1)
# and the line and paragraph separators.
_HEADER_BREAKING = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def check_line(field: str, value: object, limit: int) -> str:
    """One header line's text: storable, no control or line-breaking character."""
    if not isinstance(value, str) or not is_storable_text(value):
        raise ValidationError({field: f"Give text of at most {limit} characters."})
    if _HEADER_BREAKING.search(value):
        raise ValidationError(
            {field: "Must be one line: no control characters, CR, LF or other line breaks."}
        )
    if len(value) > limit:
        raise ValidationError({field: f"Is {len(value)} characters; at most {limit} are allowed."})
    return value


def check_addresses(field: str, value: object, limit: int) -> list[str]:
    """Plain addresses (name@domain) from one address or a list of them."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, bytes | dict):
        raise ValidationError({field: "Give an address or a list of addresses."})
    found = []
    for item in items:
        text = check_line(field, item, MAX_ADDRESS_CHARS)
        try:
            validate_email(text)
        except ValidationError:
            raise ValidationError(
                {field: f"{text[:100]!r} is not an email address (give name@domain only)."}
            ) from None
        found.append(text)
        if len(found) > limit:
            raise ValidationError({field: f"Give at most {limit} addresses."})
    return found


def sender(app_slug: str, from_: object, domain: str) -> str:
    """The From: an address of the app's own domain, with an optional display name."""
    own = app_domain(app_slug, domain)
    if not mail_capable(app_slug):
        raise ValidationError(
            {
                "from_": f"App {app_slug!r} sends no mail: its slug is not a lower-case host "
                "label (letters, digits, '-', '_'), so it has no mail domain."
            }
        )
    if from_ is None:
        return f"{DEFAULT_LOCAL_PART}@{own}"
    text = check_line("from_", from_, MAX_ADDRESS_CHARS)
    parsed = getaddresses([text])
    address = parsed[0][1] if len(parsed) == 1 else ""
    if not is_app_address(address, app_slug, domain):
        raise ValidationError(
            {
                "from_": f"{text[:100]!r} is not an address of app {app_slug!r}: send from "
                f"<local part>@{own}, optionally as 'Name <local part@{own}>'."
            }
        )
    name = parsed[0][0]
    return str(Address(display_name=name, addr_spec=address)) if name else address


def check_headers(headers: object) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise ValidationError({"headers": f"Give a dict of at most {MAX_HEADERS} X- headers."})
    checked = {}
    for name, value in headers.items():
        valid = isinstance(name, str) and re.fullmatch(r"[Xx]-[A-Za-z0-9-]{1,60}", name)
        if not valid:
            raise ValidationError(
                {"headers": f"{str(name)[:60]!r}: only X- headers (letters, digits, '-')."}
            )
        checked[name] = check_line("headers", value, MAX_HEADER_CHARS)
    return checked


def compose(
    app_slug: str,
    *,
    to: object,
    subject: object,
    text: object = None,
    html: object = None,
    cc: object = None,
    bcc: object = None,
    reply_to: object = None,
    from_: object = None,
    headers: object = None,
    domain: str,
    max_bytes: int,
) -> dict[str, Any]:
    """The message as its outbox row holds it (``{"email": ...}`` stays
    under `max_bytes` as jsonb), or ValidationError naming the field and
    what is allowed."""
    recipients = {
        field: check_addresses(field, value, MAX_RECIPIENTS)
        for field, value in (("to", to), ("cc", cc), ("bcc", bcc))
    }
    count = sum(map(len, recipients.values()))
    if not recipients["to"] or count > MAX_RECIPIENTS:
        raise ValidationError(
            {"to": f"Give 1 to {MAX_RECIPIENTS} recipients in all (to, cc and bcc); got {count}."}
        )
    for field, body in (("text", text), ("html", html)):
        if body is not None and (not isinstance(body, str) or not is_storable_text(body)):
            raise ValidationError({field: "Give the body as text (no NUL character)."})
    if text is None and html is None:
        raise ValidationError({"text": "Give a text body, an HTML body, or both."})
    message = {
        "from": sender(app_slug, from_, domain),
        **recipients,
        "reply_to": check_addresses("reply_to", reply_to, MAX_REPLY_TO),
        "subject": check_line("subject", subject, MAX_SUBJECT_CHARS),
        "text": text,
        "html": html,
        "headers": check_headers(headers),
        "message_id": f"<{uuid.uuid4()}@{app_domain(app_slug, domain)}>",
    }
    size = jsonb_text_size({"email": message})
    if size > max_bytes:
        raise ValidationError(
            {
                "text": f"The message is {size} bytes as stored; at most {max_bytes} are "
                "allowed (PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES): shorten its bodies."
            }
        )
    return message


def reply_fields(event: dict[str, Any], subject: str | None) -> dict[str, Any]:
    """To, subject and threading of an answer to an email event: to its
    first Reply-To address (else its From) only, so one message received
    never becomes mail to many; the ids it threads by only when they are
    well-formed (they come from outside)."""
    original = event.get("message") or {}
    candidates = [*(original.get("reply_to") or []), original.get("from") or {}]
    to = next((a["address"] for a in candidates if isinstance(a, dict) and a.get("address")), None)
    if to is None:
        raise ValidationError({"to": "The message has no From or Reply-To to answer."})
    if subject is None:
        original_subject = " ".join(str(original.get("subject") or "").split())
        has_re = original_subject.lower().startswith("re:")
        subject = (original_subject if has_re else f"Re: {original_subject}")[:MAX_SUBJECT_CHARS]
        subject = _HEADER_BREAKING.sub(" ", subject)
    fields: dict[str, Any] = {"to": [to], "subject": subject}
    message_id = original.get("message_id")
    if isinstance(message_id, str) and MESSAGE_ID.fullmatch(message_id):
        references = [
            r
            for r in original.get("references") or []
            if isinstance(r, str) and MESSAGE_ID.fullmatch(r)
        ]
        fields["in_reply_to"] = message_id
        fields["references"] = [*references, message_id][-MAX_REFERENCES:]
    return fields
