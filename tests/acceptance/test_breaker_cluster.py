"""A failing endpoint under a real `manage.py qcluster`: the script's circuit
opens and holds its rows without consuming their attempts, probes after the
cool-down and closes once the endpoint answers again; Retry-After on a 429
is honoured."""

import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler

import pytest
from django.db import connection
from django.utils import timezone

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry, ScriptCircuit
from picloud.domain.authz import Role
from picloud.models import Script
from tests.acceptance.cluster import Cluster
from tests.endpoints import serve
from tests.factories import MembershipFactory
from tests.helpers import wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

LOCAL_WEBHOOKS = {"PICLOUD_WEBHOOK_ALLOW_PRIVATE": "true", "PICLOUD_WEBHOOK_ALLOW_HTTP": "true"}
ROWS = 40


class Flaky(BaseHTTPRequestHandler):
    """Answers `status` (with `retry_after`, if set) until told otherwise;
    records when each request came."""

    protocol_version = "HTTP/1.1"
    status, retry_after = 503, None
    lock = threading.Lock()
    times: list = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        with cls.lock:
            cls.times.append(time.monotonic())
            status, retry_after = cls.status, cls.retry_after
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    Flaky.status, Flaky.retry_after, Flaky.times = 503, None, []
    with serve(Flaky) as url:
        yield url


@pytest.fixture
def script(db, monkeypatch, endpoint):
    for name, value in LOCAL_WEBHOOKS.items():  # to save an http://127.0.0.1 script
        monkeypatch.setenv(name, value)
    member = MembershipFactory(role=Role.AppAdmin.value)
    hook = Script.objects.create(
        app=member.app, name="hook", runtime="webhook", webhook_url=endpoint + "/in"
    )
    return member, hook


def _enqueue(member, hook, n):
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
            "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            [member.app_id, hook.id, member.principal_id, n],
        )


@pytest.fixture
def cluster(tmp_path):
    started = []

    def start(**env):
        c = Cluster(connection.settings_dict, tmp_path / "cluster.log", **LOCAL_WEBHOOKS, **env)
        started.append(c.start())
        return c

    yield start
    for c in started:
        c.stop()


def test_the_breaker_opens_holds_rows_uncounted_probes_and_closes(script, cluster):
    member, hook = script
    cluster(
        PICLOUD_CIRCUIT_FAILURE_THRESHOLD="3",
        PICLOUD_CIRCUIT_COOLDOWN_MS="3000",
        PICLOUD_TRIGGER_RETRY_MAX_ATTEMPTS="3",
        PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS="100",
        PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS="100",
    )
    _enqueue(member, hook, ROWS)
    circuit = wait_for(
        lambda: ScriptCircuit.objects.filter(script=hook, open_until__isnull=False).first(),
        timeout=30,
        what="the circuit to open",
    )
    assert circuit.failures >= 3 and "503" in circuit.last_error
    attempts = _attempts()
    # Halfway through the cool-down every row's backoff (100 ms) is long over:
    # without the breaker they would all have run again (and, at 3 attempts,
    # soon be dead letters). Open, it claims none of them.
    halfway = circuit.open_until - timedelta(milliseconds=1500)
    wait_for(lambda: timezone.now() >= halfway, timeout=5, what="half the cool-down")
    assert OutboxEntry.objects.filter(due_at__lte=timezone.now()).count() > ROWS // 2
    assert _attempts() <= attempts + 2, "held rows consume no attempts (2: claims racing the open)"
    Flaky.status = 200  # the endpoint recovers: the probe after the cool-down closes it
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=60, what="every row delivered")
    assert ScriptCircuit.objects.get(script=hook).open_until is None
    assert not DeadLetter.objects.exists(), "no row ran out of attempts behind the breaker"


def _attempts() -> int:
    return sum(OutboxEntry.objects.values_list("attempts", flat=True))


def test_retry_after_on_a_429_is_honoured(script, cluster):
    member, hook = script
    Flaky.status, Flaky.retry_after = 429, 2
    cluster(
        PICLOUD_CIRCUIT_FAILURE_THRESHOLD="100",
        PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS="50",
        PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS="10000",
    )
    _enqueue(member, hook, 1)
    wait_for(lambda: len(Flaky.times) >= 1, timeout=30, what="the first attempt")
    Flaky.status = 200
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=30, what="the retry")
    first, second = Flaky.times[:2]
    assert second - first >= 2.0, "not before the Retry-After (the backoff alone is 50 ms)"
