"""A multi-host DATABASE_URL (a failover list): checked at start-up, and
handed to child processes unchanged, options included."""

import os
import subprocess
import sys

import environ
import pytest
from psycopg.conninfo import conninfo_to_dict

from picloud.db import hostlist
from picloud.db.pgconn import database_url
from tests.helpers import PROJECT_DIR

FAILOVER = "postgres://u:pw@db1:5433,db2:5434/app?target_session_attrs=read-write&connect_timeout=2"


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u@db1:5432/app",
        "postgres://u@db1/app",
        "postgres://u@db1:5432,db2:5433/app",
        "postgres://u@db1,db2,db3/app",
        "postgres://u:p,w@db1:1,db2:65535/app",  # a comma in the password is no host
    ],
)
def test_host_lists_that_libpq_reads_as_written_pass(url):
    hostlist.check(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgres://u@db1:5432,db2/app", "a port on some hosts of the list only"),
        ("postgres://u@db1:5432,,db2:5433/app", "a host of the list is empty"),
        ("postgres://u@db1:x,db2:5433/app", "not a number from 1 to 65535"),
        ("postgres://u@db1:0,db2:5433/app", "not a number from 1 to 65535"),
        ("postgres://u@[::1]:5432,[::2]:5433/app", "an IPv6 address in a host list"),
    ],
)
def test_malformed_host_lists_are_refused_saying_why(url, why):
    with pytest.raises(ValueError, match=why):
        hostlist.check(url)


def test_a_child_process_gets_every_host_and_the_options():
    settings_dict = environ.Env.db_url_config(FAILOVER)
    url = database_url(settings_dict)
    assert url == FAILOVER
    params = conninfo_to_dict(url)
    assert (params["host"], params["port"]) == ("db1,db2", "5433,5434")
    assert params["target_session_attrs"] == "read-write"
    assert hostlist.pairs(settings_dict) == ["db1:5433", "db2:5434"]
    assert hostlist.pairs({"HOST": "db1,db2", "PORT": "6432"}) == ["db1:6432", "db2:6432"]


def _settings(url: str) -> subprocess.CompletedProcess:
    show = (
        "from django.conf import settings as s; d = s.DATABASES['default']; "
        "print(d['HOST'], d['PORT'], sorted(d['OPTIONS'].items()))"
    )
    env = dict(os.environ, DATABASE_URL=url, PICLOUD_DATABASE_ANNOUNCED="")
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", show],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_settings_take_a_failover_list_with_a_connect_timeout_by_default():
    proc = _settings("postgres://u@db1:5433,db2:5434/app?target_session_attrs=read-write")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == (
        "db1,db2 5433,5434 [('connect_timeout', 5), ('target_session_attrs', 'read-write')]"
    )
    assert "picloud: database: PostgreSQL at db1:5433, db2:5434/app" in proc.stderr


def test_a_malformed_failover_list_stops_start_up_with_one_line():
    proc = _settings("postgres://u:secret@db1:5433,db2/app")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(
        "picloud: configuration error: DATABASE_URL is not valid "
        "(a port on some hosts of the list only: give every host its port)"
    ), lines[0]
    assert "host1:port1,host2:port2/db?target_session_attrs=read-write" in lines[0]
    assert "secret" not in proc.stderr, "the password must not be shown"
