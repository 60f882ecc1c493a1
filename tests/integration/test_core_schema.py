"""The core tables as the SQL defines them: constraints hold at the database."""

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from picloud.models import App, AppMembership, Principal, Script
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, UserFactory

pytestmark = pytest.mark.django_db


def _sql(statement, params=None):
    with connection.cursor() as cur:
        cur.execute(statement, params)


def test_a_principal_is_created_for_every_user():
    user = UserFactory()
    assert Principal.objects.filter(user=user).count() == 1
    user.save()  # saving again must not create a second one
    assert Principal.objects.filter(user=user).count() == 1


def test_principal_follows_user_activity():
    user = UserFactory()
    assert user.principal.is_active
    user.is_active = False
    user.save()
    assert not Principal.objects.get(user=user).is_active


def test_one_membership_per_app_and_principal():
    m = MembershipFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        AppMembership.objects.create(app=m.app, principal=m.principal, role="viewer")


def test_unknown_role_is_refused_by_the_database(app):
    principal = UserFactory().principal
    with pytest.raises(IntegrityError), transaction.atomic():
        _sql(
            "INSERT INTO app_memberships (app_id, principal_id, role) VALUES (%s, %s, 'owner')",
            [app.id, principal.id],
        )


def test_script_names_are_unique_per_app_only(app):
    ScriptFactory(app=app, name="notify")
    ScriptFactory(name="notify")  # same name, another app: fine
    with pytest.raises(IntegrityError), transaction.atomic():
        ScriptFactory(app=app, name="notify")


def test_slugs_are_unique():
    AppFactory(slug="shop")
    with pytest.raises(IntegrityError), transaction.atomic():
        App.objects.create(slug="shop", name="again")


def test_sql_defaults_fill_ids_and_timestamps():
    with connection.cursor() as cur:
        cur.execute("INSERT INTO apps (slug, name) VALUES ('raw', 'Raw') RETURNING id, created_at")
        app_id, created_at = cur.fetchone()
    assert app_id is not None and created_at is not None


def test_deleting_an_app_in_sql_cascades_to_memberships_and_scripts(app):
    MembershipFactory(app=app)
    ScriptFactory(app=app)
    _sql("DELETE FROM apps WHERE id = %s", [app.id])
    assert not AppMembership.objects.filter(app_id=app.id).exists()
    assert not Script.objects.filter(app_id=app.id).exists()


def test_deleting_a_user_removes_principal_and_memberships():
    m = MembershipFactory()
    m.principal.user.delete()
    assert not AppMembership.objects.filter(pk=m.pk).exists()
    assert not Principal.objects.filter(pk=m.principal.pk).exists()


def test_model_state_matches_migrations():
    # Fails (SystemExit) when a model drifted from the migrations' state.
    call_command("makemigrations", check=True, dry_run=True, verbosity=0)
