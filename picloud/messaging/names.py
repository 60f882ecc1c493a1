"""Names of topics and queues, and what a message may hold.

A name is 1 to 200 characters: ASCII letters, digits, and ``_ . : -``,
starting with a letter or digit. It goes into URLs as it is, and ``:``
lets pubsub patterns (``orders:*``) pick a family of topics. The tables'
CHECKs (picloud/sql/0005_topics_and_queues.sql) say the same.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.exceptions import ValidationError

from picloud.config import SandboxCeiling
from picloud.db.storable import Unstorable, check_json, jsonb_text_size

MAX_NAME_LENGTH = 200
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
NAME_RULE = (
    f"1 to {MAX_NAME_LENGTH} characters: ASCII letters, digits and _ . : - , "
    "starting with a letter or digit"
)
# A message as JSON at most (SQS's limit); and never more than fits an event
# under PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES with its envelope around it.
MAX_MESSAGE_BYTES = 256 * 1024
# What an event adds around a message: names and ids, a few hundred bytes
# (a trigger's name written with escaped control characters could take more).
ENVELOPE_BYTES = 1024


def validate_name(what: str, name: object) -> str:
    """`name` if it is a valid topic or queue name (`what` says which), else
    ValidationError naming what is allowed."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise ValidationError(
            {"name": f"{shown} is not a valid {what} name; allowed: {NAME_RULE}."},
            code="invalid_name",
        )
    return name


def possible_name(name: object) -> bool:
    """Whether some topic or queue could have this name: lookups of any
    other (too long, a NUL, a lone surrogate...) answer "none" without a
    query the driver or PostgreSQL would refuse."""
    return isinstance(name, str) and NAME_RE.fullmatch(name) is not None


def message_limit() -> int:
    """The most bytes a message may have as JSON."""
    return min(MAX_MESSAGE_BYTES, SandboxCeiling.current().max_payload_bytes - ENVELOPE_BYTES)


class MessageTooLarge(ValidationError):
    """A message over message_limit()."""


def check_message(message: Any) -> str:
    """The message as JSON text for jsonb, or ValidationError saying why not
    (MessageTooLarge for its size)."""
    try:
        check_json(message)
        text = json.dumps(message, separators=(",", ":"), allow_nan=False)
        size = jsonb_text_size(message)  # what the sandbox's payload cap measures
    except (Unstorable, TypeError, ValueError) as exc:
        raise ValidationError(
            {
                "message": f"The message cannot be stored: {exc}. Allowed: JSON (dicts with "
                "string keys, lists, strings, finite numbers, booleans, None)."
            }
        ) from None
    limit = message_limit()
    if size > limit:
        raise MessageTooLarge(
            {"message": f"The message is {size} bytes as JSON; at most {limit} are allowed."}
        )
    return text
