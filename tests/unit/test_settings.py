"""Settings read at import (picloud/settings.py): a bad value stops any
manage.py command with one line, before any database is touched."""

import os
import subprocess
import sys

import pytest

from tests.helpers import PROJECT_DIR

# Nothing listens here: these commands must never need a database.
NO_DATABASE = "postgres://nobody@127.0.0.1:9/none"


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    child_env = dict(os.environ, DATABASE_URL=NO_DATABASE, PICLOUD_DATABASE_ANNOUNCED="1")
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_DIR,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# (variable, bad value, what the one line must say is allowed)
BAD_SETTINGS = [
    ("DJANGO_DEBUG", "maybe", "one of true, false, 1, 0, yes, no, on, off"),
    ("DJANGO_BEHIND_TLS_PROXY", "sure", "one of true, false, 1, 0, yes, no, on, off"),
    ("PICLOUD_QCLUSTER_WORKERS", "abc", "an integer from 1 to 64"),
    ("PICLOUD_QCLUSTER_WORKERS", "0", "an integer from 1 to 64"),
    ("PICLOUD_QCLUSTER_WORKERS", "-1", "an integer from 1 to 64"),
    ("PICLOUD_QCLUSTER_WORKERS", "65", "an integer from 1 to 64"),
    ("PICLOUD_QCLUSTER_WORKERS", "\u0663", "an integer from 1 to 64"),
    ("PICLOUD_LOG_LEVEL", "bogus", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
]


@pytest.mark.parametrize(("name", "bad", "allowed"), BAD_SETTINGS)
def test_bad_setting_stops_start_up_with_one_line(name, bad, allowed):
    proc = manage("check", **{name: bad})
    assert proc.returncode != 0, f"{name}={bad!r} must stop start-up: {proc.stdout}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr}"
    assert lines[0].startswith(f"picloud: configuration error: {name}={bad!r} "), lines[0]
    assert lines[0].endswith(f"allowed is {allowed}"), lines[0]


def test_a_bad_setting_also_stops_project_commands():
    # A command of ours is only found once settings load; Django re-raises
    # the settings error instead of "Unknown command".
    proc = manage("gc_dead_letters", "--dry-run", PICLOUD_LOG_LEVEL="loud")
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        "picloud: configuration error: PICLOUD_LOG_LEVEL='loud' is not valid: "
        "allowed is one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    ), proc.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:secret@db.example:abc/db",
        "postgres://u:secret@db.example:99999/db",
        # An unencoded '/' in the password: urllib reads "secret" as the port
        # and says so in its error.
        "postgres://u:secret/pw@db.example:5432/db",
        "mysql://u:secret@h/db",
        "u:secret@h/db",
        "",
    ],
)
def test_bad_database_url_is_one_line_without_the_url(url):
    proc = manage("check", DATABASE_URL=url)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("picloud: configuration error: DATABASE_URL is not valid"), lines[0]
    assert "allowed is postgres://" in lines[0], lines[0]
    assert "secret" not in proc.stderr, "the password must not be shown"


def test_valid_settings_are_read():
    proc = manage(
        "shell",
        "-c",
        "from django.conf import settings as s; "
        "print(s.DEBUG, s.Q_CLUSTER['workers'], s.LOGGING['root']['level'])",
        DJANGO_DEBUG="off",
        PICLOUD_QCLUSTER_WORKERS=" 3 ",
        PICLOUD_LOG_LEVEL="warning",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False 3 WARNING", proc.stdout


def test_behind_a_tls_proxy_django_trusts_its_forwarded_proto():
    show = "from django.conf import settings as s; print(s.SECURE_PROXY_SSL_HEADER)"
    assert manage("shell", "-c", show).stdout.strip().endswith("None")
    proc = manage("shell", "-c", show, DJANGO_BEHIND_TLS_PROXY="true")
    assert proc.stdout.strip().endswith("('HTTP_X_FORWARDED_PROTO', 'https')"), proc.stderr


@pytest.mark.parametrize(
    "url",
    [
        "smtp://user:hunter2#x@mail.example.com:587",
        "smtp://user:hunter2/x@mail.example.com:587",
        "bogus://user:hunter2@mail.example.com",
    ],
)
def test_a_bad_email_url_stops_start_up_without_showing_it(url):
    proc = manage("check", EMAIL_URL=url)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout, "the password must not be shown"
    assert proc.stderr.strip().startswith("picloud: configuration error: EMAIL_URL is not valid")
    assert "allowed is smtp://" in proc.stderr


def test_email_url_smtp_uses_the_backend_that_keeps_refused_recipients():
    use = "from django.conf import settings; print(settings.EMAIL_BACKEND, settings.EMAIL_PORT)"
    proc = manage("shell", "-c", use, EMAIL_URL="smtp+tls://u:p@mail.example.com:587")
    assert proc.stdout.split()[-2:] == ["picloud.mail.delivery.SmtpBackend", "587"], proc.stderr
