"""API tokens: create one (shown once), recognise one, revoke one.

A token is ``pct_`` followed by 43 URL-safe characters (256 random bits). We
store its SHA-256 only, so a leaked database does not leak usable tokens.
A token carries a subset of the seven scopes and may be limited to one app;
what it can do is the intersection of those with its principal's roles
(``TokenGrant.allows`` and ``has_capability`` both have to say yes).

``issue`` holds the rules every way of creating a token shares (command,
admin, Python API): no tokens for inactive users, ``platform:admin`` only
for principals that hold it, a short one-line name, an expiry within
MAX_LIFETIME.
"""

from __future__ import annotations

import hashlib
import secrets
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.utils import timezone

from picloud.db.sqlexec import fetch_one, model_from_row
from picloud.db.sqlfiles import load_queries
from picloud.domain.authz import Capability, Scope, _AppCapability, _Capability, has_capability
from picloud.models import ApiToken, App, Principal

QUERIES = load_queries("picloud")

TOKEN_PREFIX = "pct_"
PREFIX_CHARS = 12  # characters of a token kept in clear to tell tokens apart
DEFAULT_LIFETIME = timedelta(days=90)
MAX_LIFETIME = timedelta(days=3650)
NAME_MAX_CHARS = ApiToken._meta.get_field("name").max_length


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(scopes: Iterable[str | Scope]) -> list[str]:
    """The scope values, checked: at least one, each one of the seven."""
    values = sorted({str(s) for s in scopes})  # a Scope is a str of its value
    unknown = [s for s in values if s not in Scope._value2member_map_]
    if unknown or not values:
        allowed = ", ".join(s.value for s in Scope)
        what = f"unknown scope(s) {', '.join(unknown)}" if unknown else "no scope given"
        raise ValidationError(f"{what}; allowed: {allowed}")
    return values


def check_name(name: object) -> str:
    """The name stripped, or ValidationError: non-empty text of at most
    NAME_MAX_CHARS characters, none of them control characters (PostgreSQL
    refuses NUL) or unpaired surrogates (not encodable)."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("a token needs a name saying what it is for")
    name = name.strip()
    if len(name) > NAME_MAX_CHARS:
        raise ValidationError(
            f"a token's name is at most {NAME_MAX_CHARS} characters, got {len(name)}"
        )
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise ValidationError(
            "a token's name may not contain control characters or unpaired surrogates"
        )
    return name


def check_holder(principal: Principal, scopes: Iterable[str]) -> None:
    """ValidationError unless `principal` may hold a token with these scopes:
    its user is active, and `platform:admin` only if it holds that itself.

    Roles limit every use of a token anyway; this refuses tokens that do
    nothing today and would start working, unnoticed, once the user is
    reactivated or promoted."""
    if not principal.is_active:
        raise ValidationError(f"user {principal} is inactive: inactive users get no tokens")
    holds_platform_admin = has_capability(principal, Capability.PlatformManageApps())
    if Scope.PlatformAdmin in scopes and not holds_platform_admin:
        raise ValidationError(
            f"scope {Scope.PlatformAdmin.value} is only for principals that hold it "
            f"(superusers); {principal} does not"
        )


def create_token(
    principal: Principal,
    *,
    name: str,
    scopes: Iterable[str | Scope],
    app: App | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Store a new token and return it with its plaintext, which is not kept.

    `expires_at` defaults to DEFAULT_LIFETIME from now; it must lie in the
    future and within MAX_LIFETIME. ValidationError when a rule is broken
    (see ``issue``).
    """
    if isinstance(scopes, str):  # would read as one scope per character
        raise ValidationError(f"scopes must be a list of scopes, not one string: {scopes!r}")
    if not isinstance(scopes, Iterable):
        raise ValidationError(f"scopes must be a list of scopes, got {scopes!r}")
    token = ApiToken(
        principal=principal,
        name=name,
        scopes=list(scopes),
        app=app,
        expires_at=expires_at or timezone.now() + DEFAULT_LIFETIME,
    )
    return token, issue(token)


def issue(token: ApiToken) -> str:
    """Check an unsaved token, give it a fresh secret, save it; return the
    plaintext (the only time anyone sees it). ValidationError, naming the
    problem, when a rule is broken."""
    if token.principal_id is None:
        raise ValidationError("a token needs a principal")
    token.scopes = parse_scopes(token.scopes)
    check_holder(token.principal, token.scopes)
    token.name = check_name(token.name)
    _check_expiry(token.expires_at)
    raw = new_token()
    token.prefix, token.token_hash = raw[:PREFIX_CHARS], hash_token(raw)
    token.save()
    return raw


def _check_expiry(expires_at: object) -> None:
    if not isinstance(expires_at, datetime) or timezone.is_naive(expires_at):
        raise ValidationError(f"expires_at must be a timezone-aware datetime, got {expires_at!r}")
    now = timezone.now()
    if expires_at <= now:
        raise ValidationError(f"expires_at {expires_at.isoformat()} is in the past")
    if expires_at > now + MAX_LIFETIME:
        raise ValidationError(f"expires_at is more than {MAX_LIFETIME.days} days away")


def revoke(token: ApiToken) -> bool:
    """Revoke now; False if it already was."""
    changed = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    token.refresh_from_db(fields=["revoked_at"])
    return bool(changed)


@dataclass(frozen=True)
class TokenGrant:
    """What a presented, valid token lets its principal attempt."""

    token_id: uuid.UUID
    principal: Principal
    scopes: frozenset[str]
    app_id: uuid.UUID | None

    def reaches(self, app_id: uuid.UUID) -> bool:
        """Whether the token may be used on this app at all."""
        return self.app_id is None or self.app_id == app_id

    def allows(self, capability: _Capability) -> bool:
        """The token's half of a check; the principal's role is the other half."""
        if capability.scope.value not in self.scopes:
            return False
        return not isinstance(capability, _AppCapability) or self.reaches(capability.app_id)


def well_formed(raw: str | None) -> bool:
    """Could this be one of our tokens? (Spares a lookup for obvious junk.)"""
    return bool(raw) and raw.startswith(TOKEN_PREFIX) and len(raw) <= 200


def lookup(
    raw: str | None, *, app_slug: str | None = None, script_name: str | None = None
) -> tuple[TokenGrant, dict[str, Any]] | None:
    """The grant of a presented token and the row it was read from (with the
    app, role and script columns of `app_slug`/`script_name`, NULL when they
    do not exist), in one query; None when the token is malformed, unknown,
    revoked, expired, or its user is inactive."""
    if not well_formed(raw):
        return None
    params = {"token_hash": hash_token(raw), "app_slug": app_slug, "script_name": script_name}
    row = fetch_one(QUERIES["token_context"], params)
    if row is None or not row["is_active"]:
        return None
    # Built from the row, not loaded: callers check capabilities without
    # querying again.
    user = model_from_row(
        get_user_model(),
        {k: row[k] for k in ("is_active", "is_superuser")} | {"id": row["user_id"]},
    )
    principal = model_from_row(Principal, {"id": row["principal_id"], "user_id": user.pk})
    principal.user = user
    grant = TokenGrant(row["token_id"], principal, frozenset(row["scopes"]), row["token_app_id"])
    return grant, row


def authenticate(raw: str | None) -> TokenGrant | None:
    """The grant of a presented token, or None when it is malformed, unknown,
    revoked, expired, or its user is inactive."""
    found = lookup(raw)
    return found[0] if found else None
