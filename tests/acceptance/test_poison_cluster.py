"""Poison webhook answers under a real `manage.py qcluster`: the issue's
measurement (one clean and three poison webhooks fanned out from the same
KV writes, 2 attempts at most), end to end."""

import uuid
from collections import Counter

import pytest
from django.db import connection

from deadletters.models import DeadLetter
from outbox.models import OutboxEntry
from picloud import kv
from picloud.domain.authz import Role
from picloud.models import Script
from tests.acceptance.cluster import Cluster
from tests.endpoints import POISON_ANSWERS, PoisonEndpoint, poison_endpoint
from tests.factories import MembershipFactory, kv_trigger
from tests.helpers import wait_for

pytestmark = [pytest.mark.acceptance, pytest.mark.django_db(transaction=True)]

WRITES = 100
MAX_ATTEMPTS = 2
DRAIN_TIMEOUT = 30.0  # seconds; the fixed code drains in a few
LOCAL_WEBHOOKS = {"PICLOUD_WEBHOOK_ALLOW_PRIVATE": "true", "PICLOUD_WEBHOOK_ALLOW_HTTP": "true"}
CLUSTER_ENV = {
    **LOCAL_WEBHOOKS,
    "PICLOUD_TRIGGER_RETRY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "PICLOUD_TRIGGER_RETRY_BASE_DELAY_MS": "50",
    "PICLOUD_TRIGGER_RETRY_MAX_DELAY_MS": "200",
    # Every poison row must reach its last attempt here; with the breaker on,
    # the failing endpoints' circuits would open and their rows wait instead
    # (tests/acceptance/test_breaker_cluster.py covers that).
    "PICLOUD_CIRCUIT_FAILURE_THRESHOLD": "10000",
}

ANSWERS = {p: POISON_ANSWERS[p] for p in ("/clean", "/nul-500", "/nul-400", "/bytes-500")}
POISON = ("/nul-500", "/nul-400", "/bytes-500")
# What a poison answer's body must read as in its dead letter.
READABLE = {
    "/nul-500": "broken\ufffdanswer",
    "/nul-400": "refused\ufffdhere",
    "/bytes-500": " not utf-8",
}
# How many times each endpoint must be called per write: once when it
# succeeds or refuses for good (400), MAX_ATTEMPTS when it may pass on retry.
EXPECTED_CALLS = {"/clean": 1, "/nul-500": MAX_ATTEMPTS, "/nul-400": 1, "/bytes-500": MAX_ATTEMPTS}


@pytest.fixture
def endpoint():
    with poison_endpoint() as url:
        yield url


@pytest.fixture
def member(db, monkeypatch):
    for name, value in LOCAL_WEBHOOKS.items():  # to save http://127.0.0.1 scripts
        monkeypatch.setenv(name, value)
    return MembershipFactory(role=Role.AppAdmin.value)


def _webhook(app, url):
    return Script.objects.create(
        app=app, name=f"hook-{uuid.uuid4().hex[:8]}", runtime="webhook", webhook_url=url
    )


def _progress(paths_by_script) -> str:
    """What the database and the endpoint saw so far, for a timeout's message."""
    clean = [n for (path, _), n in PoisonEndpoint.received.items() if path == "/clean"]
    letters = Counter(paths_by_script[d.script_id] for d in DeadLetter.objects.all())
    return (
        f"{OutboxEntry.objects.count()} rows left in the outbox; "
        f"dead letters {dict(letters)}; {len(clean)} of {WRITES} clean rows delivered, "
        f"{sum(n > 1 for n in clean)} of them more than once"
    )


def test_poison_webhooks_are_dead_lettered_and_clean_ones_delivered_once(
    tmp_path, endpoint, member
):
    app, principal = member.app, member.principal
    paths_by_script = {}
    for path in ANSWERS:
        script = _webhook(app, endpoint + path)
        kv_trigger(app, script, principal, name=path.strip("/"))
        paths_by_script[script.id] = path
    # Write before the cluster starts so every claimed batch mixes clean and
    # poison rows of the same writes.
    keys = [f"o-{i}" for i in range(WRITES)]
    for i, key in enumerate(keys):
        kv.put(app, "orders", key, {"i": i}, principal=principal)
    assert OutboxEntry.objects.count() == WRITES * len(ANSWERS)
    dead_letters = WRITES * len(POISON)

    def settled():
        return not OutboxEntry.objects.exists() and DeadLetter.objects.count() >= dead_letters

    cluster = Cluster(connection.settings_dict, tmp_path / "cluster.log", **CLUSTER_ENV)
    with cluster:
        try:
            wait_for(settled, timeout=DRAIN_TIMEOUT, what="the outbox to drain", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {_progress(paths_by_script)}") from None
    log = cluster.log()

    received = PoisonEndpoint.received
    for path, calls in EXPECTED_CALLS.items():
        assert {k: received[(path, k)] for k in keys} == dict.fromkeys(keys, calls), (
            f"every write reaches {path} exactly {calls} time(s)"
        )
    assert sum(received.values()) == WRITES * sum(EXPECTED_CALLS.values()), (
        f"no request beyond those the writes cause: {received}"
    )
    assert not OutboxEntry.objects.exists()

    letters = list(DeadLetter.objects.all())
    assert len(letters) == dead_letters
    assert Counter((paths_by_script[d.script_id], d.payload["key"]) for d in letters) == {
        (path, k): 1 for path in POISON for k in keys
    }, "one dead letter per poison row, none for a clean row"
    for letter in letters:
        path = paths_by_script[letter.script_id]
        status = ANSWERS[path][0]
        assert letter.attempts == EXPECTED_CALLS[path], (path, letter.attempts)
        assert len(letter.errors) == letter.attempts, (path, letter.errors)
        for error in [letter.last_error, *letter.errors]:
            assert error.startswith(f"webhook answered {status}: "), (path, error)
            assert READABLE[path] in error, (path, error)
            assert "\x00" not in error, (path, error)
            assert ("replaced with U+FFFD" in error) == (b"\x00" in ANSWERS[path][2]), (
                path,
                error,
            )

    # A failed statement shows as a warning ("dispatch loop: database error",
    # "could not settle outbox row"): none may have happened.
    troubles = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    assert not troubles, "\n".join(troubles[:20])
    assert "Traceback" not in log, log[-3000:]
