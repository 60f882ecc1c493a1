"""Raw SQL names auth_user: a swapped user model is refused by a system check."""

import os
import subprocess
import sys

from django.contrib.auth import get_user_model
from django.test import override_settings

from picloud.domain.user_model import check_user_model
from tests.helpers import PROJECT_DIR


def test_a_swapped_user_model_is_refused_naming_it():
    with override_settings(AUTH_USER_MODEL="accounts.Member"):
        [error] = check_user_model()
    assert error.id == "picloud.E010" and error.is_serious()
    assert "'accounts.Member'" in error.msg and "auth_user" in error.msg
    assert "Remove AUTH_USER_MODEL" in error.hint


def test_djangos_own_user_model_passes():
    assert check_user_model() == []


def test_the_app_registers_it_at_start_up():
    """In a fresh process: importing the module here would register it too."""
    listed = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.core.checks.registry import registry; "
            "print(*sorted(f'{c.__module__}.{c.__name__}' for c in registry.get_checks()))",
        ],
        cwd=PROJECT_DIR,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "picloud.domain.user_model.check_user_model" in listed.stdout.split()


def test_the_sql_it_guards_still_names_the_user_table():
    """If the SQL stopped naming auth_user, the check (and its message) would
    need another look."""
    assert get_user_model()._meta.db_table == "auth_user"
    for path in ("picloud/sql/0001_core.sql", "picloud/sql/queries.sql"):
        assert "auth_user" in (PROJECT_DIR / path).read_text(), path
