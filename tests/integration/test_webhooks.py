"""The webhook runtime against a local HTTP server, with each sender
(tests/webhook_senders.py) behind execute_row."""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow
from picloud.config import SandboxCeiling, WebhookConfig
from picloud.domain.authz import Role
from picloud.models import Script
from picloud.runtime.execution import Failure, Success, execute_row
from tests.factories import MembershipFactory
from tests.helpers import PROJECT_DIR, free_port

pytestmark = pytest.mark.django_db

LOCAL = WebhookConfig(allow_private=True, allow_http=True)


def documented_verify():
    """The receiver recipe exactly as docs/webhooks.md shows it."""
    text = (PROJECT_DIR / "docs" / "webhooks.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]


class Receiver(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append((self.path, dict(self.headers), body))
        if self.path == "/ok":
            self._answer(200, json.dumps({"received": json.loads(body)}), "application/json")
        elif self.path == "/text":
            self._answer(201, "thanks", "text/plain")
        elif self.path == "/fail":
            self._answer(500, "E" * 2000, "text/plain")
        elif self.path == "/bad-request":
            self._answer(400, "no", "text/plain")
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow":
            time.sleep(1.5)
            self._answer(200, "{}", "application/json")
        elif self.path == "/huge":
            self._answer(200, "x" * 10_000, "text/plain")
        elif self.path in ("/busy", "/unavailable", "/busy-500"):
            status = {"/busy": 429, "/unavailable": 503, "/busy-500": 500}[self.path]
            self.send_response(status)
            self.send_header("Retry-After", "120")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/not-http":
            self.wfile.write(b"garbage\r\n\r\n")

    def _answer(self, status, text, content_type):
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Receiver.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def deliver(app, override_config, webhook_post):
    """Run one row of a new webhook script; with each sender in turn (webhook_post)."""
    override_config(WebhookConfig(allow_http=True))  # to save http:// scripts
    principal = MembershipFactory(app=app, role=Role.Developer.value).principal

    def run(url, payload=None, *, config=LOCAL, ceiling=None):
        script = Script.objects.create(
            app=app, name=f"hook-{time.monotonic_ns()}", runtime="webhook", webhook_url=url
        )
        repo = PgOutboxRepo()
        repo.insert(
            NewOutboxRow(
                app.id, "kv", script.id, principal.id, payload or {"key": "k1", "op": "insert"}
            )
        )
        (row,) = repo.claim_due(limit=1, lease=60)
        return script, row, execute_row(row, ceiling=ceiling, webhook_config=config)

    return run


def test_delivery_is_signed_and_verifies_with_the_documented_recipe(receiver, deliver):
    script, row, outcome = deliver(receiver + "/ok")
    assert outcome == Success({"received": {"key": "k1", "op": "insert"}}, status=200)
    ((path, headers, body),) = Receiver.requests
    assert path == "/ok"
    assert headers["X-PiCloud-Delivery"] == str(row.id)
    assert json.loads(body) == {"key": "k1", "op": "insert"}
    verify = documented_verify()
    assert verify(script.secret, headers, body)
    assert not verify("whsec_wrong", headers, body), "a wrong secret must not verify"
    assert not verify(script.secret, headers, body + b" "), "a changed body must not verify"


def test_a_non_json_2xx_answer_is_text(receiver, deliver):
    assert deliver(receiver + "/text")[2] == Success("thanks", status=201)


def test_a_500_is_a_retryable_failure_with_status_and_truncated_body(receiver, deliver):
    outcome = deliver(receiver + "/fail")[2]
    assert isinstance(outcome, Failure) and outcome.retryable and outcome.status == 500
    assert outcome.error.startswith("webhook answered 500: EEE") and len(outcome.error) < 600


def test_a_400_and_a_redirect_are_not_retried(receiver, deliver):
    for path, status in (("/bad-request", 400), ("/redirect", 302)):
        outcome = deliver(receiver + path)[2]
        assert isinstance(outcome, Failure) and not outcome.retryable and outcome.status == status
    assert [p for p, _, _ in Receiver.requests] == ["/bad-request", "/redirect"], (
        "no redirect followed"
    )


def test_retry_after_on_429_and_503_is_kept_on_the_failure(receiver, deliver):
    for path, status in (("/busy", 429), ("/unavailable", 503)):
        outcome = deliver(receiver + path)[2]
        assert (outcome.status, outcome.retryable, outcome.retry_after) == (status, True, 120.0)
    # Other statuses' Retry-After is not a request to wait (RFC 9110 names 429 and 503).
    assert deliver(receiver + "/busy-500")[2].retry_after is None


def test_timeout_names_the_ceiling(receiver, deliver):
    started = time.monotonic()
    outcome = deliver(receiver + "/slow", ceiling=SandboxCeiling(timeout_ms=300))[2]
    assert time.monotonic() - started < 1.2
    assert isinstance(outcome, Failure) and outcome.retryable and outcome.status == 504
    assert "PICLOUD_SANDBOX_TIMEOUT_MS" in outcome.error


def test_connection_refused_is_a_retryable_failure(deliver):
    outcome = deliver(f"http://127.0.0.1:{free_port()}/nobody")[2]
    assert isinstance(outcome, Failure) and outcome.retryable
    assert "connection failed" in outcome.error


def test_an_answer_that_is_not_http_is_a_retryable_connection_failure(receiver, deliver):
    outcome = deliver(receiver + "/not-http")[2]
    assert isinstance(outcome, Failure) and outcome.retryable and outcome.status == 502
    assert "not valid HTTP" in outcome.error and "garbage" in outcome.error


def test_oversized_payload_is_not_sent(receiver, deliver):
    outcome = deliver(
        receiver + "/ok", {"blob": "x" * 5000}, ceiling=SandboxCeiling(max_payload_bytes=1000)
    )[2]
    assert isinstance(outcome, Failure) and not outcome.retryable
    assert "PICLOUD_SANDBOX_MAX_PAYLOAD_BYTES=1000" in outcome.error
    assert Receiver.requests == []


def test_oversized_answer_is_a_failure_naming_the_ceiling(receiver, deliver):
    outcome = deliver(receiver + "/huge", ceiling=SandboxCeiling(max_result_bytes=1000))[2]
    assert isinstance(outcome, Failure) and "PICLOUD_SANDBOX_MAX_RESULT_BYTES" in outcome.error


def test_private_destinations_are_refused_unless_allowed(receiver, deliver):
    refused = deliver(receiver + "/ok", config=WebhookConfig(allow_private=False, allow_http=True))[
        2
    ]
    assert isinstance(refused, Failure) and not refused.retryable
    assert "non-public address (127.0.0.1)" in refused.error
    assert "PICLOUD_WEBHOOK_ALLOW_PRIVATE" in refused.error
    assert Receiver.requests == [], "nothing may reach a refused destination"
    allowed = deliver(receiver + "/ok", config=LOCAL)[2]
    assert allowed.ok and len(Receiver.requests) == 1


def test_the_guard_uses_the_process_config_by_default(receiver, deliver, override_config):
    override_config(WebhookConfig(allow_private=False, allow_http=True))
    assert not deliver(receiver + "/ok", config=None)[2].ok
    override_config(LOCAL)
    assert deliver(receiver + "/ok", config=None)[2].ok


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ],
)
def test_non_public_addresses_are_recognised(address):
    from picloud.runtime.webhooks import _is_public

    assert not _is_public(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "8.8.8.8"])
def test_public_addresses_pass(address):
    from picloud.runtime.webhooks import _is_public

    assert _is_public(address)
