"""Two operators replaying the same dead letter at once: one replay happens."""

import threading

import pytest
from django.db import connection

from deadletters.models import DeadLetter
from deadletters.resolve import postgres_resolver
from outbox.models import OutboxEntry
from tests.factories import AppFactory, ScriptFactory

pytestmark = pytest.mark.django_db(transaction=True)


def test_concurrent_replays_enqueue_exactly_once():
    script = ScriptFactory(app=AppFactory())
    letters = [
        DeadLetter.objects.create(
            app=script.app,
            source_kind="kv",
            script=script,
            payload={"i": i},
            last_error="x",
            errors=["x"],
            attempts=1,
            depth=0,
        )
        for i in range(20)
    ]
    ids = [d.pk for d in letters]
    reports = []
    start = threading.Barrier(2)

    def operator():
        try:
            start.wait(5)
            reports.append(postgres_resolver().replay_all(ids, by=None))
        finally:
            connection.close()

    threads = [threading.Thread(target=operator) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert OutboxEntry.objects.count() == 20, "each dead letter replayed once"
    assert sum(len(r.done) for r in reports) == 20
    assert sum(len(r.already_resolved) for r in reports) == 20
    assert not DeadLetter.objects.filter(resolution__isnull=True).exists()
