"""Who may do what: the seven scopes, per-app roles and capabilities.

A *capability* is a concrete thing to do ("manage the triggers of app X").
Each capability maps onto exactly one of the seven *scopes*; a per-app *role*
grants a set of scopes; ``role_satisfies`` joins the two. ``has_capability``
is the one place that answers "may this principal do this?" — admin, the HTTP
API, the Python API and the dispatcher all ask it.

The seven scopes are a product commitment: adding a capability means mapping
it onto an existing scope, not inventing an eighth.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from django.core.exceptions import PermissionDenied

from picloud.domain.roles import Role, Scope
from picloud.models import AppMembership, Principal

_VIEWER = frozenset({Scope.AppRead, Scope.KvRead})
_DEVELOPER = _VIEWER | {Scope.KvWrite, Scope.ScriptInvoke, Scope.ScriptManage}
_APP_ADMIN = _DEVELOPER | {Scope.AppAdmin}

# PlatformAdmin is granted by no per-app role: only superusers hold it.
ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.Viewer: _VIEWER,
    Role.Developer: _DEVELOPER,
    Role.AppAdmin: _APP_ADMIN,
}


@dataclass(frozen=True)
class _Capability:
    scope: ClassVar[Scope]


@dataclass(frozen=True)
class _AppCapability(_Capability):
    app_id: uuid.UUID


class Capability:
    """Namespace of capability types; ``Capability.AppManageTriggers(app_id)``."""

    class AppRead(_AppCapability):
        scope = Scope.AppRead

    class KvRead(_AppCapability):
        scope = Scope.KvRead

    class KvWrite(_AppCapability):
        scope = Scope.KvWrite

    class ScriptInvoke(_AppCapability):
        scope = Scope.ScriptInvoke

    class ScriptManage(_AppCapability):
        scope = Scope.ScriptManage

    class AppManageTriggers(_AppCapability):
        scope = Scope.AppAdmin

    class AppDeadLetterManage(_AppCapability):
        scope = Scope.AppAdmin

    class AppManageMembers(_AppCapability):
        scope = Scope.AppAdmin

    class AppManageConcurrency(_AppCapability):
        """Set the app's and its scripts' caps on executions in flight."""

        scope = Scope.AppAdmin

    class TopicPublish(_AppCapability):
        """Publish to the app's topics: their subscribers' scripts run."""

        scope = Scope.ScriptInvoke

    class QueueSend(_AppCapability):
        """Put messages on the app's queues: work for their consumers."""

        scope = Scope.ScriptInvoke

    class QueueConsume(_AppCapability):
        """Receive, acknowledge and give back messages of the app's queues:
        a receive changes the message (hidden, counted), so it is a write."""

        scope = Scope.KvWrite

    class QueueRead(_AppCapability):
        """See the app's topics and queues and their depths."""

        scope = Scope.AppRead

    class AppManageMessaging(_AppCapability):
        """Create and delete the app's topics and queues; purge a queue."""

        scope = Scope.AppAdmin

    class EmailRead(_AppCapability):
        """Read the mail the app received, raw and attachments included:
        its contents are the app's data, like KV values."""

        scope = Scope.KvRead

    class EmailSend(_AppCapability):
        """Send mail from the app's domain (a script's ``ctx.email``)."""

        scope = Scope.ScriptInvoke

    class PlatformManageApps(_Capability):
        scope = Scope.PlatformAdmin

    ALL_APP_CAPABILITIES: ClassVar[tuple[type[_AppCapability], ...]]


Capability.ALL_APP_CAPABILITIES = (
    Capability.AppRead,
    Capability.KvRead,
    Capability.KvWrite,
    Capability.ScriptInvoke,
    Capability.ScriptManage,
    Capability.AppManageTriggers,
    Capability.AppDeadLetterManage,
    Capability.AppManageMembers,
    Capability.AppManageConcurrency,
    Capability.TopicPublish,
    Capability.QueueSend,
    Capability.QueueConsume,
    Capability.QueueRead,
    Capability.AppManageMessaging,
    Capability.EmailRead,
    Capability.EmailSend,
)


def role_satisfies(role: Role | str | None, capability: _Capability) -> bool:
    """Whether holding `role` in the capability's app grants it."""
    if role is None:
        return False
    try:
        role = Role(role)
    except ValueError:
        return False  # an unknown role stored by hand grants nothing
    return capability.scope in ROLE_SCOPES[role]


def role_in_app(principal: Principal, app_id: uuid.UUID) -> Role | None:
    role = (
        AppMembership.objects.filter(principal_id=principal.pk, app_id=app_id)
        .values_list("role", flat=True)
        .first()
    )
    return Role(role) if role in Role._value2member_map_ else None


def has_capability(
    principal: Principal | None,
    capability: _Capability,
    *,
    role_lookup: Callable[[Principal, uuid.UUID], Role | None] | None = None,
) -> bool:
    """The one answer to "may this principal do this capability?".

    Superusers: yes. Missing or inactive principals: no. Otherwise the
    principal's role in the capability's app decides. `role_lookup` lets a
    caller that checks many rows at once read each role once (the dispatcher).
    """
    if principal is None or not principal.is_active:
        return False
    if principal.is_superuser:
        return True
    if not isinstance(capability, _AppCapability):
        return False
    role = (role_lookup or role_in_app)(principal, capability.app_id)
    return role_satisfies(role, capability)


def require(principal: Principal | None, capability: _Capability) -> None:
    """Raise PermissionDenied unless `has_capability`; the message names what is missing."""
    if not has_capability(principal, capability):
        who = "an unknown principal" if principal is None else f"principal {principal.pk}"
        app = getattr(capability, "app_id", None)
        where = f" in app {app}" if app else ""
        raise PermissionDenied(
            f"{who} lacks {type(capability).__name__} (scope {capability.scope.value}){where}"
        )
