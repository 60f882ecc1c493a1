"""Small helpers shared by tests: waiting with a deadline, subprocess env."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from picloud.db.pgconn import database_url

PROJECT_DIR = Path(__file__).resolve().parent.parent


def wait_for(condition: Callable[[], object], *, timeout: float, what: str, interval=0.05):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def subprocess_env(settings_dict: dict, **extra: str) -> dict[str, str]:
    """Environment for a child process that must use the test database."""
    env = dict(os.environ)
    env["DATABASE_URL"] = database_url(settings_dict)
    env["PICLOUD_DATABASE_ANNOUNCED"] = ""
    env.update(extra)
    return env


def fake_resolver(answers: dict[str, list[str]]):
    """A socket.getaddrinfo that answers `answers[host]` (other hosts as the
    system does), and the hosts it was asked for."""
    calls = []
    system = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        if host not in answers:
            return system(host, port, family, type, proto, flags)
        result = []
        for address in answers[host]:
            if ":" in address:
                result.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                result.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return result

    return getaddrinfo, calls


def trusted_server_context(directory: Path, monkeypatch, subject_alt_name: str) -> ssl.SSLContext:
    """A server's TLS context with a new self-signed certificate for
    `subject_alt_name` ("IP:127.0.0.1", "DNS:hooks.example"), which
    ssl.create_default_context() trusts until the test ends."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    make = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", f"/CN={subject_alt_name.split(':', 1)[1]}"]
    subject += ["-addext", f"subjectAltName={subject_alt_name}"]
    subprocess.run(
        [*make, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    trusting = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda: trusting(cafile=str(cert)))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    return server_context


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain_outbox(max_rows: int = 1_000):
    """Run every due outbox row once, in order of claiming; return [(row, outcome)].

    A stand-in for the dispatcher in tests of what scripts do: rows are
    deleted after one execution whatever the outcome.
    """
    from outbox.storage.pg_repository import PgOutboxRepo
    from picloud.runtime.execution import execute_row

    repo = PgOutboxRepo()
    ran = []
    while len(ran) < max_rows:
        rows = repo.claim_due(limit=50, lease=300)
        if not rows:
            return ran
        for row in rows:
            ran.append((row, execute_row(row)))
            repo.delete([row.id])
    raise AssertionError(f"the outbox did not drain within {max_rows} rows")


def trigger_inlines(
    *,
    kv_forms: int = 1,
    cron_forms: int = 0,
    pubsub_forms: int = 0,
    queue_forms: int = 0,
    email_forms: int = 0,
    dead_letter_forms: int = 1,
) -> dict[str, str]:
    """The management-form fields of the trigger admin's detail inlines (a
    browser posts the cron and queue inlines' defaults, which tests leave
    out: none by default)."""
    fields = {}
    for prefix, total in (
        ("kv_details", kv_forms),
        ("cron_details", cron_forms),
        ("pubsub_details", pubsub_forms),
        ("queue_details", queue_forms),
        ("email_details", email_forms),
        ("dead_letter_details", dead_letter_forms),
    ):
        fields |= {
            f"{prefix}-TOTAL_FORMS": str(total),
            f"{prefix}-INITIAL_FORMS": "0",
            f"{prefix}-MIN_NUM_FORMS": "0",
            f"{prefix}-MAX_NUM_FORMS": "1",
        }
    return fields
