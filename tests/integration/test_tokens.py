"""Token rules (picloud.domain.tokens.create_token) and the create_api_token command."""

import io
from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from picloud.domain import tokens
from picloud.models import ApiToken, principal_for
from tests.factories import AppFactory, UserFactory

pytestmark = pytest.mark.django_db


def create_api_token(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_token", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


# --- the rules, in create_token itself ---------------------------------------


def test_no_token_for_an_inactive_user():
    principal = principal_for(UserFactory(is_active=False))
    with pytest.raises(
        ValidationError, match=r"user \S+ is inactive: inactive users get no tokens"
    ):
        tokens.create_token(principal, name="t", scopes=["kv:read"])
    assert not ApiToken.objects.exists()


def test_platform_admin_scope_only_for_principals_that_hold_it():
    developer = principal_for(UserFactory())
    with pytest.raises(ValidationError, match=r"scope platform:admin is only for principals"):
        tokens.create_token(developer, name="t", scopes=["kv:read", "platform:admin"])
    assert not ApiToken.objects.exists()

    superuser = principal_for(UserFactory(is_superuser=True))
    token, _ = tokens.create_token(superuser, name="ops", scopes=["platform:admin"])
    assert token.scopes == ["platform:admin"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x" * 201, "a token's name is at most 200 characters, got 201"),
        ("   ", "a token needs a name"),
        ("", "a token needs a name"),
        (None, "a token needs a name"),
        ("ci\x00deploys", "control characters"),
        ("ci\ud800", "unpaired surrogates"),
    ],
)
def test_bad_names_are_refused_with_what_is_allowed(name, message):
    principal = principal_for(UserFactory())
    with pytest.raises(ValidationError, match=message):
        tokens.create_token(principal, name=name, scopes=["kv:read"])


def test_a_name_of_200_characters_is_kept():
    token, _ = tokens.create_token(principal_for(UserFactory()), name="n" * 200, scopes=["kv:read"])
    assert ApiToken.objects.get(pk=token.pk).name == "n" * 200


@pytest.mark.parametrize(
    ("scopes", "message"),
    [("kv:read", "a list of scopes, not one string"), (None, "a list of scopes")],
)
def test_scopes_must_be_a_list(scopes, message):
    with pytest.raises(ValidationError, match=message):
        tokens.create_token(principal_for(UserFactory()), name="t", scopes=scopes)


def test_naive_expiry_is_refused():
    with pytest.raises(ValidationError, match="timezone-aware"):
        tokens.create_token(
            principal_for(UserFactory()),
            name="t",
            scopes=["kv:read"],
            expires_at=datetime.now() + timedelta(days=1),  # naive: the point of the test
        )


# --- the command --------------------------------------------------------------


def test_command_issues_a_token():
    user = UserFactory()
    app = AppFactory()
    raw, summary = create_api_token(
        user.username, "--name", "ci", "--scope", "kv:read", "--app", app.slug, "--days", "3650"
    )
    grant = tokens.authenticate(raw)
    assert grant is not None and grant.app_id == app.pk, summary
    token = ApiToken.objects.get(pk=grant.token_id)
    assert token.expires_at > timezone.now() + timedelta(days=3649)


@pytest.mark.parametrize("days", ["0", "-1", "3651", "3000000", "99999999999", "\u0663", "1_0"])
def test_command_days_out_of_range_says_what_is_allowed(days):
    user = UserFactory()
    with pytest.raises(CommandError, match=r"--days.*an integer from 1 to 3650 \(days\)"):
        create_api_token(user.username, "--name", "t", "--scope", "kv:read", "--days", days)
    assert not ApiToken.objects.exists()


def test_command_refuses_a_long_name():
    user = UserFactory()
    with pytest.raises(CommandError, match="at most 200 characters, got 300"):
        create_api_token(user.username, "--name", "n" * 300, "--scope", "kv:read")


def test_command_refuses_inactive_users_and_platform_admin_for_non_superusers():
    inactive = UserFactory(is_active=False)
    with pytest.raises(CommandError, match="inactive users get no tokens"):
        create_api_token(inactive.username, "--name", "t", "--scope", "kv:read")
    developer = UserFactory()
    with pytest.raises(CommandError, match="scope platform:admin is only for principals"):
        create_api_token(developer.username, "--name", "t", "--scope", "platform:admin")
    assert not ApiToken.objects.exists()


def test_command_days_given_as_a_keyword_is_checked_too():
    user = UserFactory()
    with pytest.raises(CommandError, match=r"--days=3000000 .*from 1 to 3650"):
        call_command("create_api_token", user.username, name="t", scope=["kv:read"], days=3_000_000)


@pytest.mark.parametrize("where", ["username", "app"])
def test_command_unknown_user_or_app_with_unstorable_characters(where):
    user = UserFactory()
    bad = "ops\x00\udcff"
    args = [bad if where == "username" else user.username, "--name", "t", "--scope", "kv:read"]
    if where == "app":
        args += ["--app", bad]
    with pytest.raises(CommandError, match=f"no {'user named' if where == 'username' else 'app'}"):
        create_api_token(*args)
