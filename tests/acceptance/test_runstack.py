"""`manage.py runstack` (what `make run` ends with) serves admin, runs
qcluster and receives mail."""

import http.client
import json
import signal
import smtplib
import subprocess
import sys
import urllib.request

import pytest
from django.db import connection

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud.demo import DEMO_ORDERS, load_demo
from picloud.domain import tokens
from picloud.models import InboundEmail
from tests.factories import MembershipFactory, ScriptFactory
from tests.helpers import PROJECT_DIR, free_port, subprocess_env, wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except OSError:
        return None


def _invoke(port, slug, script, token, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/apps/{slug}/scripts/{script}/invoke",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def _invoke_chunked(port, slug, script, token, chunks):
    """The same request with Transfer-Encoding: chunked (no Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            f"/api/apps/{slug}/scripts/{script}/invoke",
            body=iter(chunks),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            encode_chunked=True,
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_runstack_serves_admin_login_the_api_and_runs_the_cluster(tmp_path):
    demo = load_demo(password="pw")
    member = MembershipFactory(role="developer")
    script = ScriptFactory(app=member.app, handler="picloud.echo")
    _, token = tokens.create_token(member.principal, name="t", scopes=["script:invoke"])
    port, smtp_port = free_port(), free_port()
    log_path = tmp_path / "runstack.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runstack", "--addr", f"127.0.0.1:{port}"],
            cwd=PROJECT_DIR,
            env=subprocess_env(
                connection.settings_dict,
                PICLOUD_SMTP_ADDR=f"127.0.0.1:{smtp_port}",
                PICLOUD_EMAIL_DOMAIN="mail.test",
                EMAIL_URL="dummymail://",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: _status(f"http://127.0.0.1:{port}/admin/login/") == 200,
            timeout=60,
            what="the admin login page",
        )
        wait_for(
            lambda: "Q Cluster" in log_path.read_text() and "running" in log_path.read_text(),
            timeout=60,
            what="qcluster's 'running' log line",
        )
        # A synchronous invocation through the web server and the cluster.
        answer = _invoke(port, member.app.slug, script.name, token, b'{"through": "runstack"}')
        assert answer == (200, {"through": "runstack"})
        # A chunked body (no Content-Length) reaches the script whole.
        chunks = [b'{"sent": ', b'"in chunks", ', b'"n": 3}']
        answer = _invoke_chunked(port, member.app.slug, script.name, token, chunks)
        assert answer == (200, {"sent": "in chunks", "n": 3})
        # Mail to the demo's orders address is stored, and its email trigger
        # answers it through the cluster (the reply's row is delivered).
        wait_for(
            lambda: f"SMTP receiver on 127.0.0.1:{smtp_port}" in log_path.read_text(),
            timeout=60,
            what="the SMTP receiver's start line",
        )
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
            smtp.sendmail(
                "you@example.com",
                [f"orders@{demo.app_slug}.mail.test"],
                b"From: you@example.com\r\nSubject: hello\r\n\r\nHi\r\n",
            )
        assert InboundEmail.objects.filter(app__slug=demo.app_slug).count() == 1
        # The answer's row is written before the mail's row is settled, so
        # neither left means both ran.
        wait_for(
            lambda: (
                not OutboxEntry.objects.filter(source_kind__in=["email", "email_send"]).exists()
            ),
            timeout=60,
            what="the demo's answer to the mail delivered",
        )
        assert not DeadLetter.objects.filter(source_kind__in=["email", "email_send"]).exists()
        # The demo data's failing trigger turns its orders into dead letters
        # on its own: a newcomer sees the badge within a minute.
        wait_for(
            lambda: DeadLetter.objects.filter(app__slug=demo.app_slug).count() >= DEMO_ORDERS,
            timeout=60,
            what="the demo's dead letters",
        )
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    output = log_path.read_text()
    assert "has stopped" in output, f"the cluster should stop on Ctrl-C:\n{output}"
