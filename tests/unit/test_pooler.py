"""A transaction-mode pooler in front of PostgreSQL (PoolerConfig): what it
turns off (LISTEN, session settings, prepared statements) and the polling
that replaces LISTEN."""

import logging
import os
import subprocess
import sys
import threading

import psycopg
import pytest

from outbox.dispatch import worker
from picloud.config import ConfigError, PoolerConfig
from picloud.db import pgconn
from picloud.db.pglisten import Listener
from tests.helpers import PROJECT_DIR, wait_for

DIRECT = "postgres://listener:s3cret@10.0.0.5:5432/picloud"


def test_defaults_keep_sessions_and_listen():
    config = PoolerConfig.from_env({})
    assert (config.pooler, config.listen_url, config.poll_ms) == ("none", None, 200)
    assert config.session_state_kept and config.listens


def test_a_transaction_pooler_without_a_direct_url_turns_listen_off():
    config = PoolerConfig.from_env({"PICLOUD_DATABASE_POOLER": "Transaction"})
    assert config.pooler == "transaction"
    assert not config.session_state_kept
    assert not config.listens, "LISTEN through a transaction pooler hears nothing"


def test_a_direct_url_turns_listen_back_on():
    env = {"PICLOUD_DATABASE_POOLER": "transaction", "PICLOUD_LISTEN_DATABASE_URL": DIRECT}
    config = PoolerConfig.from_env(env)
    assert config.listens and config.listen_url == DIRECT


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://u:s3cret@h/db", "not a postgres:// URL"),
        ("postgres://u:s3cret@h:5432/", "it names no database"),
        ("postgres://u:s3cret@h:5432/db?sslmode", "malformed"),
    ],
)
def test_a_bad_direct_url_is_refused_without_showing_it(url, why):
    with pytest.raises(ConfigError) as caught:
        PoolerConfig.from_env({"PICLOUD_LISTEN_DATABASE_URL": url})
    message = str(caught.value)
    assert message.startswith(f"PICLOUD_LISTEN_DATABASE_URL is not valid ({why})"), message
    assert "allowed is postgres://user:pass@host:port/db" in message
    assert "s3cret" not in message, "the message must not show a password"


def test_the_poll_interval_is_bounded():
    with pytest.raises(ConfigError, match="allowed is an integer from 10 to 60000"):
        PoolerConfig.from_env({"PICLOUD_LISTEN_POLL_MS": "5"})


def test_the_listen_connector_follows_the_config(override_config, monkeypatch):
    override_config(PoolerConfig(pooler="transaction"))
    assert pgconn.listen_connector() is None
    opened = []
    monkeypatch.setattr(psycopg, "connect", lambda *a, **kw: opened.append((a, kw)))
    override_config(PoolerConfig(pooler="transaction", listen_url=DIRECT))
    pgconn.listen_connector()()
    assert opened == [((DIRECT,), {"autocommit": True})], "LISTEN must use the direct URL"


def test_without_a_connection_the_listener_polls_and_says_so_once(override_config, caplog):
    override_config(PoolerConfig(pooler="transaction", poll_ms=10))
    looks = []
    stop = threading.Event()
    listener = Listener(
        "picloud_outbox",
        what="outbox rows",
        connect=None,
        on_notify=lambda _payload: pytest.fail("nothing can notify without LISTEN"),
        on_connect=lambda: looks.append(1),
        stop=stop,
    )
    with caplog.at_level(logging.INFO, logger="picloud.listen"):
        listener.start()
        try:
            wait_for(lambda: len(looks) >= 5, timeout=5, what="the owner looking every 10 ms")
        finally:
            stop.set()
            listener.join(2)
    assert not listener.is_alive(), "the polling thread must stop when told"
    said = [r.getMessage() for r in caplog.records if r.name == "picloud.listen"]
    assert said == [
        "listening for outbox rows by polling every 10 ms (LISTEN is off: "
        "PICLOUD_DATABASE_POOLER=transaction and no PICLOUD_LISTEN_DATABASE_URL)"
    ]


def test_no_session_setting_goes_through_a_transaction_pooler(override_config, monkeypatch):
    # The setting would stay on a pooled server connection that other clients
    # use next: their commits (KV writes) would stop waiting for the disk.
    override_config(PoolerConfig(pooler="transaction"))
    monkeypatch.setattr(
        worker.connection, "cursor", lambda: pytest.fail("no session SET under a pooler")
    )
    worker.prepare_connection()


def test_settings_turn_off_prepared_statements_and_server_side_cursors():
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "db = settings.DATABASES['default']; "
        "print(db['DISABLE_SERVER_SIDE_CURSORS'], db['OPTIONS']['prepare_threshold'])"
    )
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="picloud.settings",
        DATABASE_URL="postgres://nobody@127.0.0.1:9/none",
        PICLOUD_DATABASE_ANNOUNCED="1",
        PICLOUD_DATABASE_POOLER="transaction",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR, env=env, capture_output=True, text=True
    )
    assert out.stdout.split() == ["True", "None"], out.stderr
