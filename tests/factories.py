import factory
from django.contrib.auth import get_user_model

from picloud.domain.authz import Role
from picloud.models import App, AppMembership, Script, principal_for
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import KvSpec, NewTrigger


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.invalid")
    is_staff = True
    password = factory.django.Password("pw-for-tests-only")


class AppFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = App

    slug = factory.Sequence(lambda n: f"app-{n}")
    name = factory.LazyAttribute(lambda a: f"App {a.slug}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AppMembership

    app = factory.SubFactory(AppFactory)
    principal = factory.LazyFunction(lambda: principal_for(UserFactory()))
    role = Role.AppAdmin.value


class ScriptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Script

    app = factory.SubFactory(AppFactory)
    name = factory.Sequence(lambda n: f"script-{n}")
    runtime = "python"
    handler = "picloud.noop"


def kv_trigger(
    app,
    script,
    principal,
    *,
    name=None,
    collection="*",
    ops=("insert", "update", "delete"),
    enabled=True,
):
    """A kv trigger through the repository, the one write path (admin's too)."""
    return PgTriggerRepo().create(
        NewTrigger(
            app_id=app.id,
            kind="kv",
            script_id=script.id,
            name=name or f"kv-{collection}-{'-'.join(ops)}",
            registered_by_principal=principal.id,
            enabled=enabled,
            kv=KvSpec(collection, tuple(ops)),
        )
    )
