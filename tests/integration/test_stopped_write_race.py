"""Two executions of one row stopping the same event at once: one dead letter."""

import threading
import uuid

import pytest
from django.db import connection, transaction

from deadletters.models import DeadLetter
from deadletters.pg_repository import PgDeadLetterRepo
from deadletters.repository import NewDeadLetter
from tests.factories import AppFactory, MembershipFactory, ScriptFactory, kv_trigger
from tests.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def _blocked_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


def test_the_second_insert_of_a_stopped_event_waits_then_records_nothing():
    app = AppFactory()
    admin = MembershipFactory(app=app).principal
    script = ScriptFactory(app=app)
    trigger = kv_trigger(app, script, admin)
    new = NewDeadLetter(
        app_id=app.id,
        source_kind="kv",
        script_id=script.id,
        trigger_id=trigger.id,
        run_as_principal=admin.id,
        outbox_id=None,
        cause_outbox_id=uuid.uuid4(),
        payload={"collection": "c", "key": "k"},
        last_error="depth limit stopped a cascade: test",
    )
    first_inserted, release_first = threading.Event(), threading.Event()
    results = {}

    def first():
        try:
            with transaction.atomic():
                results["first"] = PgDeadLetterRepo().insert(new)
                first_inserted.set()
                release_first.wait(10)
        finally:
            connection.close()

    def second():
        try:
            first_inserted.wait(10)
            with transaction.atomic():
                results["second"] = PgDeadLetterRepo().insert(new)
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    try:
        wait_for(_blocked_on_a_lock, timeout=10, what="the second insert to wait on the first")
    finally:
        release_first.set()
        for t in threads:
            t.join(10)

    assert results["first"] is not None and results["second"] is None
    assert DeadLetter.objects.count() == 1
