"""Hundreds of executions in flight under a real `manage.py qcluster`
(2 worker processes x 100): SIGKILL loses nothing, SIGTERM settles or
hands back every row that was running."""

import os
import signal
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest
from django.db import connection
from django.utils import timezone

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud.domain.authz import Role
from picloud.models import App, Script
from tests.acceptance.cluster import Cluster
from tests.endpoints import serve
from tests.factories import MembershipFactory
from tests.helpers import wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

ROWS = 300
LOCAL_WEBHOOKS = {"PICLOUD_WEBHOOK_ALLOW_PRIVATE": "true", "PICLOUD_WEBHOOK_ALLOW_HTTP": "true"}


class SlowSink(BaseHTTPRequestHandler):
    """Answers 200 after `delay` seconds; counts deliveries by their id and
    how many requests are inside at once."""

    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver
    delay = 0.0
    lock = threading.Lock()
    delivered: Counter = Counter()
    inside = most = 0

    @classmethod
    def reset(cls, delay: float) -> None:
        with cls.lock:
            cls.delay, cls.delivered, cls.inside, cls.most = delay, Counter(), 0, 0

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        with cls.lock:
            cls.inside += 1
            cls.most = max(cls.most, cls.inside)
        try:
            time.sleep(cls.delay)
        finally:
            with cls.lock:
                cls.inside -= 1
                cls.delivered[self.headers["X-PiCloud-Delivery"]] += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def sink():
    SlowSink.reset(0.0)
    with serve(SlowSink) as url:
        yield url


@pytest.fixture
def rows(db, monkeypatch, sink):
    """ROWS committed outbox rows, each a webhook delivery to the sink; their ids."""
    for name, value in LOCAL_WEBHOOKS.items():  # to save an http://127.0.0.1 script
        monkeypatch.setenv(name, value)
    member = MembershipFactory(role=Role.AppAdmin.value)
    # Room for both processes' 100 slots (the default cap is half of them).
    App.objects.filter(pk=member.app_id).update(max_concurrency=ROWS)
    script = Script.objects.create(
        app=member.app, name="hook", runtime="webhook", webhook_url=sink + "/in"
    )
    with connection.cursor() as cur:
        cur.execute(
            "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
            "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) FROM generate_series(1, %s) g "
            "RETURNING id",
            [member.app_id, script.id, member.principal_id, ROWS],
        )
        return {str(r[0]) for r in cur.fetchall()}


@pytest.fixture
def clusters(tmp_path):
    started = []

    def start(name, **env):
        c = Cluster(connection.settings_dict, tmp_path / f"{name}.log", **LOCAL_WEBHOOKS, **env)
        started.append(c.start())
        return c

    yield start
    for c in started:
        c.stop(may_hang=True)


def _leased() -> int:
    return OutboxEntry.objects.filter(due_at__gt=timezone.now()).count()


def test_sigkill_with_a_hundred_in_flight_loses_nothing(sink, rows, clusters):
    SlowSink.reset(delay=3.0)
    first = clusters("first")
    wait_for(lambda: SlowSink.inside >= 100, timeout=30, what="a hundred deliveries in flight")
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait()
    in_flight_when_killed = SlowSink.most
    SlowSink.delay = 0.0
    clusters("second")  # takes the killed claims once their leases run out
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=90, what="every row delivered")
    assert in_flight_when_killed >= 100
    missing = rows - set(SlowSink.delivered)
    assert not missing, f"{len(missing)} rows were never delivered"
    assert not DeadLetter.objects.exists()


def test_sigterm_settles_what_finishes_in_the_grace_and_hands_back_nothing_leased(
    sink, rows, clusters
):
    SlowSink.reset(delay=1.0)
    first = clusters("first")
    wait_for(lambda: SlowSink.inside >= 100, timeout=30, what="a hundred deliveries in flight")
    assert first.stop() == 0
    assert _leased() == 0, "every claimed row was settled or handed back"
    left = set(map(str, OutboxEntry.objects.values_list("id", flat=True)))
    delivered = set(SlowSink.delivered)
    # What ran within the grace was acknowledged; what was left never ran.
    assert delivered == rows - left
    counted = list(OutboxEntry.objects.filter(attempts__gt=0).values_list("last_error", flat=True))
    assert not counted, f"rows left with an attempt counted: {counted[:3]}"
    clusters("second")
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=60, what="the rest delivered")
    assert set(SlowSink.delivered) == rows
    assert max(SlowSink.delivered.values()) == 1, "a graceful stop delivers nothing twice"


def test_sigterm_past_the_grace_hands_running_rows_back_uncounted(sink, rows, clusters):
    SlowSink.reset(delay=4.0)
    first = clusters("first", PICLOUD_DISPATCHER_SHUTDOWN_GRACE_MS="300")
    wait_for(lambda: SlowSink.inside >= 100, timeout=30, what="a hundred deliveries in flight")
    assert first.stop() == 0
    assert _leased() == 0, "rows cut off at the grace were handed back, not left leased"
    assert not OutboxEntry.objects.filter(attempts__gt=0).exists(), "their attempts uncounted"
    assert OutboxEntry.objects.count() == ROWS, "none of them had finished"
    SlowSink.delay = 0.0
    clusters("second")
    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=60, what="all delivered")
    assert set(SlowSink.delivered) == rows
