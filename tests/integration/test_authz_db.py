import pytest
from django.core.exceptions import PermissionDenied

from picloud.domain.authz import Capability, Role, has_capability, require
from picloud.models import principal_for
from tests.factories import AppFactory, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_superuser_may_do_anything_even_without_membership(app):
    root = principal_for(UserFactory(is_superuser=True))
    assert has_capability(root, Capability.AppManageTriggers(app.id))
    assert has_capability(root, Capability.PlatformManageApps())


def test_member_role_decides_in_that_app_only(app):
    other_app = AppFactory()
    membership = MembershipFactory(app=app, role=Role.Developer.value)
    p = membership.principal
    assert has_capability(p, Capability.KvWrite(app.id))
    assert not has_capability(p, Capability.AppManageTriggers(app.id))
    assert not has_capability(p, Capability.KvRead(other_app.id)), "no role in the other app"
    assert not has_capability(p, Capability.PlatformManageApps())


def test_app_admin_role_grants_triggers_and_dead_letters(app):
    p = MembershipFactory(app=app, role=Role.AppAdmin.value).principal
    assert has_capability(p, Capability.AppManageTriggers(app.id))
    assert has_capability(p, Capability.AppDeadLetterManage(app.id))


def test_inactive_principal_may_do_nothing(app):
    membership = MembershipFactory(app=app, role=Role.AppAdmin.value)
    user = membership.principal.user
    user.is_active = False
    user.is_superuser = True
    user.save()
    p = principal_for(user)
    assert not p.is_active
    assert not has_capability(p, Capability.AppRead(app.id))


def test_no_principal_may_do_nothing(app):
    assert not has_capability(None, Capability.AppRead(app.id))


def test_require_names_what_is_missing(app):
    p = MembershipFactory(app=app, role=Role.Viewer.value).principal
    with pytest.raises(PermissionDenied, match=r"lacks AppManageTriggers \(scope app:admin\)"):
        require(p, Capability.AppManageTriggers(app.id))
