"""Table-driven: every role x every capability."""

import uuid

import pytest

from picloud.domain.authz import ROLE_SCOPES, Capability, Role, Scope, role_satisfies

APP = uuid.uuid4()

# capability type -> the weakest role that grants it (None: no per-app role does).
WEAKEST_ROLE = {
    Capability.AppRead: Role.Viewer,
    Capability.KvRead: Role.Viewer,
    Capability.KvWrite: Role.Developer,
    Capability.ScriptInvoke: Role.Developer,
    Capability.ScriptManage: Role.Developer,
    Capability.AppManageTriggers: Role.AppAdmin,
    Capability.AppDeadLetterManage: Role.AppAdmin,
    Capability.AppManageMembers: Role.AppAdmin,
    Capability.AppManageConcurrency: Role.AppAdmin,
    Capability.TopicPublish: Role.Developer,
    Capability.QueueSend: Role.Developer,
    Capability.QueueConsume: Role.Developer,
    Capability.QueueRead: Role.Viewer,
    Capability.AppManageMessaging: Role.AppAdmin,
    Capability.EmailRead: Role.Viewer,
    Capability.EmailSend: Role.Developer,
    Capability.PlatformManageApps: None,
}
ROLE_ORDER = [Role.Viewer, Role.Developer, Role.AppAdmin]


def _capability(cls):
    return cls() if cls is Capability.PlatformManageApps else cls(APP)


def test_exactly_seven_scopes_one_of_them_app_admin():
    assert len(Scope) == 7
    assert Scope.AppAdmin in Scope


def test_trigger_and_dead_letter_capabilities_map_onto_app_admin():
    assert Capability.AppManageTriggers(APP).scope is Scope.AppAdmin
    assert Capability.AppDeadLetterManage(APP).scope is Scope.AppAdmin


def test_app_admin_role_is_stored_as_admin():
    assert Role.AppAdmin.value == "admin"


def test_table_covers_every_capability():
    assert set(WEAKEST_ROLE) == {*Capability.ALL_APP_CAPABILITIES, Capability.PlatformManageApps}


@pytest.mark.parametrize("role", [*ROLE_ORDER, None, "owner"])
@pytest.mark.parametrize("cap_type", list(WEAKEST_ROLE), ids=lambda c: c.__name__)
def test_role_satisfies(role, cap_type):
    weakest = WEAKEST_ROLE[cap_type]
    expected = (
        weakest is not None
        and role in ROLE_ORDER
        and ROLE_ORDER.index(role) >= ROLE_ORDER.index(weakest)
    )
    assert role_satisfies(role, _capability(cap_type)) is expected, (
        f"role {role!r} and {cap_type.__name__}: expected {expected}"
    )


def test_roles_are_nested():
    assert ROLE_SCOPES[Role.Viewer] < ROLE_SCOPES[Role.Developer] < ROLE_SCOPES[Role.AppAdmin]
    assert Scope.PlatformAdmin not in ROLE_SCOPES[Role.AppAdmin]


def test_capabilities_are_values():
    assert Capability.KvRead(APP) == Capability.KvRead(APP)
    assert Capability.KvRead(APP) != Capability.KvWrite(APP)
