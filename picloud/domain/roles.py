"""The seven scopes and the per-app roles (plain enums, no database).

Models store them as text; ``picloud.domain.authz`` decides with them.
"""

import enum


class Scope(enum.StrEnum):
    """The seven scopes. docs/authorization.md says what each allows."""

    AppRead = "app:read"
    KvRead = "kv:read"
    KvWrite = "kv:write"
    ScriptInvoke = "script:invoke"
    ScriptManage = "script:manage"
    AppAdmin = "app:admin"
    PlatformAdmin = "platform:admin"


class Role(enum.StrEnum):
    """Per-app roles, weakest first. Stored as text in app_memberships.role."""

    Viewer = "viewer"
    Developer = "developer"
    AppAdmin = "admin"
