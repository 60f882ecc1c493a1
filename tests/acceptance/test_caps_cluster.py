"""Per-app and per-script caps hold across two real `manage.py qcluster`
clusters on one database: a local sink holds each webhook ~0.3 s and counts
the requests inside at once, per app and per script."""

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest
from django.db import connection, transaction

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud.domain.authz import Role
from picloud.models import Script
from tests.acceptance.cluster import Cluster
from tests.endpoints import serve
from tests.factories import MembershipFactory
from tests.helpers import wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

LOCAL_WEBHOOKS = {"PICLOUD_WEBHOOK_ALLOW_PRIVATE": "true", "PICLOUD_WEBHOOK_ALLOW_HTTP": "true"}
# 2 worker processes x 15 in flight: 30 slots per cluster, so an app seen
# with more than 30 requests at once was served by both clusters.
IN_FLIGHT_PER_PROCESS = 15
SLOTS_PER_CLUSTER = 2 * IN_FLIGHT_PER_PROCESS
APP_CAP, SCRIPT_CAP = 5, 2
HOLD = 0.3  # seconds the sink holds each request


class CountingSink(BaseHTTPRequestHandler):
    """Answers 200 after HOLD seconds. The path is /<app>/<script>: counts
    the requests inside at once per app and per app/script (the most seen),
    and deliveries by their id."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    inside: Counter = Counter()
    most: Counter = Counter()
    delivered: Counter = Counter()

    @classmethod
    def reset(cls) -> None:
        with cls.lock:
            cls.inside, cls.most, cls.delivered = Counter(), Counter(), Counter()

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        app = self.path.strip("/").split("/")[0]
        keys = (app, self.path.strip("/"))
        cls = type(self)
        with cls.lock:
            for key in keys:
                cls.inside[key] += 1
                cls.most[key] = max(cls.most[key], cls.inside[key])
        try:
            time.sleep(HOLD)
        finally:
            with cls.lock:
                for key in keys:
                    cls.inside[key] -= 1
                cls.delivered[self.headers["X-PiCloud-Delivery"]] += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def sink():
    CountingSink.reset()
    with serve(CountingSink) as url:
        yield url


@pytest.fixture
def clusters(tmp_path):
    started = []

    def start(name):
        c = Cluster(
            connection.settings_dict,
            tmp_path / f"{name}.log",
            **LOCAL_WEBHOOKS,
            PICLOUD_DISPATCHER_MAX_IN_FLIGHT=str(IN_FLIGHT_PER_PROCESS),
        )
        started.append(c.start())
        return c

    yield start
    for c in started:
        c.stop(may_hang=True)


def _webhook(sink, app_name, name, member, **fields):
    return Script.objects.create(
        app=member.app,
        name=name,
        runtime="webhook",
        webhook_url=f"{sink}/{app_name}/{name}",
        **fields,
    )


def _enqueue(cur, script, member, n):
    cur.execute(
        "INSERT INTO outbox (app_id, source_kind, script_id, run_as_principal, payload) "
        "SELECT %s, 'kv', %s, %s, jsonb_build_object('n', g) FROM generate_series(1, %s) g "
        "RETURNING id",
        [script.app_id, script.id, member.principal_id, n],
    )
    return {str(r[0]) for r in cur.fetchall()}


def test_app_and_script_caps_hold_across_two_clusters(sink, monkeypatch, clusters):
    for name, value in LOCAL_WEBHOOKS.items():  # to save http://127.0.0.1 scripts
        monkeypatch.setenv(name, value)
    a = MembershipFactory(role=Role.AppAdmin.value)
    b = MembershipFactory(role=Role.AppAdmin.value)
    a.app.max_concurrency = APP_CAP
    a.app.save()
    a_hook = _webhook(sink, "a", "hook", a)
    b_hook = _webhook(sink, "b", "hook", b)  # app B has no cap of its own
    b_capped = _webhook(sink, "b", "capped", b, max_concurrency=SCRIPT_CAP)

    clusters("first")
    clusters("second")
    with transaction.atomic(), connection.cursor() as cur:  # all due at once, both woken
        rows = _enqueue(cur, a_hook, a, 200)
        rows |= _enqueue(cur, b_hook, b, 200)
        rows |= _enqueue(cur, b_capped, b, 40)

    wait_for(lambda: not OutboxEntry.objects.exists(), timeout=120, what="every row delivered")
    most = dict(CountingSink.most)
    assert most["a"] == APP_CAP, f"app A ran past (or never reached) its cap: {most}"
    assert most["b/capped"] == SCRIPT_CAP, f"the capped script: {most}"
    assert most["b"] > SLOTS_PER_CLUSTER, f"app B, uncapped, ran on both clusters: {most}"
    missing = rows - set(CountingSink.delivered)
    assert not missing, f"{len(missing)} rows were never delivered"
    assert set(CountingSink.delivered) == rows
    assert not DeadLetter.objects.exists()
