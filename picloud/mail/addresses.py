"""Which app, and which of its email triggers, an address reaches.

Mail to ``<local part>@<app slug>.<PICLOUD_EMAIL_DOMAIN>`` reaches the app.
Email triggers match the local part, lower-cased and without its ``+tag``
(RFC 5233 subaddressing: ``orders+eu`` is delivered as ``orders``, its tag
kept in the event), by the rule of KV collection patterns. The same rules
limit what an app's scripts may send from: an address of the app's own
domain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ADDRESS_LENGTH = 254  # characters of a whole address (RFC 5321's path limit, less <>)
MAX_LOCAL_PART_LENGTH = 64  # characters (RFC 5321)

# A dot-atom local part (RFC 5322 atext and dots): what mail to an app uses.
# Quoted local parts are no app's (the SMTP server unquotes a quoted
# dot-atom before it gets here): their escapes would give one mailbox many
# spellings.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# An app's label in the domain: its slug as a host label.
_APP_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class Recipient:
    address: str  # local part as given, domain lower-cased
    app_slug: str
    local_part: str  # lower-cased, without its tag: what email triggers match
    tag: str | None  # what followed the first '+', if anything


def split(address: str) -> tuple[str, str] | None:
    """(local part, lower-cased domain) of a plain dot-atom address, else None."""
    if not isinstance(address, str) or not 3 <= len(address) <= MAX_ADDRESS_LENGTH:
        return None
    local, at, domain = address.rpartition("@")
    if not at or len(local) > MAX_LOCAL_PART_LENGTH or not _LOCAL_PART.fullmatch(local):
        return None
    return local, domain.lower()


def app_domain(app_slug: str, domain: str) -> str:
    return f"{app_slug}.{domain}"


def route(address: str, domain: str) -> Recipient | None:
    """The app and local part `address` reaches under `domain`
    (PICLOUD_EMAIL_DOMAIN), or None when it is no app's address."""
    parts = split(address)
    if parts is None:
        return None
    local, host = parts
    suffix = "." + domain
    if not host.endswith(suffix):
        return None
    slug = host[: -len(suffix)]
    if not _APP_LABEL.fullmatch(slug):
        return None
    base, plus, tag = local.lower().partition("+")
    if not base:
        return None
    return Recipient(f"{local}@{host}", slug, base, tag if plus else None)


def mail_capable(app_slug: str) -> bool:
    """Whether the app's slug can be a host label: a slug with capitals (or
    another character a host name cannot hold) is no app's mail domain, so
    its app neither receives nor sends mail; two slugs differing in case
    would otherwise name one domain."""
    return _APP_LABEL.fullmatch(app_slug) is not None


def is_app_address(address: str, app_slug: str, domain: str) -> bool:
    """Whether `address` is one of the app's own (what its scripts may send from)."""
    parts = split(address)
    return parts is not None and mail_capable(app_slug) and parts[1] == app_domain(app_slug, domain)
