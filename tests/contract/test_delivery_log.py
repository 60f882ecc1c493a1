"""The delivery log's half of the outbox contract: rows acknowledged by a
claim or a delete have their attempts logged in that statement, with what
the row says (ids, kind, attempt, event key) and what the dispatcher
measured. The in-memory repository keeps the same log, and the event key's
Python twin says what the SQL function says."""

import json
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outbox.storage.delivery_log import Acked, event_key
from outbox.storage.memory_repository import MemoryOutboxRepo
from outbox.storage.repository import NewOutboxRow
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import KvSpec

LEASE = 60


def _logged(repo) -> list[dict]:
    if isinstance(repo, MemoryOutboxRepo):
        return [
            {
                **a.__dict__,
                "started_at": a.started_at.timestamp(),
            }
            for a in repo.delivery_log.attempts
        ]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM delivery_log")
        names = [c.name for c in cursor.description]
        rows = [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
    for r in rows:
        r.pop("failed")
        r["started_at"] = r["started_at"].timestamp()
    return rows


@pytest.fixture(autouse=True)
def _empty_log(transactional_db):
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE delivery_log")


def _row(world, trigger_id, payload, kind="kv"):
    return NewOutboxRow(
        app_id=world.app_id,
        source_kind=kind,
        script_id=world.script_id,
        run_as_principal=world.principal_id,
        payload=payload,
        trigger_id=trigger_id,
    )


def test_a_claim_logs_the_attempts_of_the_rows_it_acknowledges(outbox_repo, new_trigger, world):
    # (A trigger in PostgreSQL: the outbox's foreign key wants it; the memory one does not care.)
    trigger = PgTriggerRepo().create(new_trigger("kv", kv=KvSpec("orders", ("insert",))))
    kv = outbox_repo.insert(_row(world, trigger.id, {"collection": "orders", "key": "o-1"}))
    topic = outbox_repo.insert(_row(world, None, {"topic": "news"}, kind="pubsub"))
    cron = outbox_repo.insert(_row(world, None, {"scheduled_at": "x"}, kind="cron"))
    claimed = outbox_repo.claim_due(10, LEASE)
    assert {r.id for r in claimed} == {kv.id, topic.id, cron.id}
    started = time.time()
    acked = [
        Acked(started, 12),
        Acked(started + 1, 0, "error", 502, "webhook answered 502"),
        Acked(started + 2, 7, status=200, detail='{"ok": true}'),
    ]
    assert outbox_repo.claim_due(10, LEASE, ack=[kv.id, topic.id, cron.id], log=acked) == []
    assert outbox_repo.get(kv.id) is None, "acknowledged"
    by_id = {r["outbox_id"]: r for r in _logged(outbox_repo)}
    assert by_id[kv.id] == {
        "outbox_id": kv.id,
        "app_id": world.app_id,
        "trigger_id": trigger.id,
        "script_id": world.script_id,
        "source_kind": "kv",
        "attempt": 1,
        "started_at": pytest.approx(started, abs=1e-3),
        "duration_ms": 12,
        "outcome": "success",
        "disposition": "done",
        "status_code": None,
        "event_key": "orders/o-1",
        "detail": "",
    }
    assert (by_id[topic.id]["outcome"], by_id[topic.id]["status_code"]) == ("error", 502)
    assert by_id[topic.id]["event_key"] == "news"
    assert by_id[topic.id]["detail"] == "webhook answered 502"
    assert by_id[cron.id]["event_key"] is None and by_id[cron.id]["detail"] == '{"ok": true}'


def test_a_delete_logs_too_and_a_row_gone_logs_nothing(outbox_repo, world):
    row = outbox_repo.insert(_row(world, None, {"collection": "c", "key": "k"}))
    outbox_repo.claim_due(1, LEASE)
    gone = uuid.uuid4()
    assert outbox_repo.delete([row.id, gone], log=[Acked(1.0, 1), Acked(2.0, 2)]) == 1
    assert [r["outbox_id"] for r in _logged(outbox_repo)] == [row.id]


_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.text(max_size=600)
)


@settings(
    max_examples=60,
    deadline=None,
    # Long texts are slow to draw on a loaded machine; they are the point (the 512 cut).
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["kv", "pubsub", "email", "dead_letter", "cron", "invoke", "queue"]),
    fields=st.dictionaries(
        st.sampled_from(["collection", "key", "topic", "message_id", "dead_letter_id", "n"]),
        _SCALARS,
    ),
)
def test_the_event_keys_python_twin_says_what_sql_says(transactional_db, kind, fields):
    fields = {k: v.replace("\x00", "") if isinstance(v, str) else v for k, v in fields.items()}
    with connection.cursor() as cursor:
        cursor.execute("SELECT delivery_log_event_key(%s, %s::jsonb)", [kind, json.dumps(fields)])
        assert cursor.fetchone()[0] == event_key(kind, fields)


def test_started_at_round_trips_as_utc(outbox_repo, world):
    row = outbox_repo.insert(_row(world, None, {}))
    outbox_repo.claim_due(1, LEASE)
    at = datetime(2026, 11, 30, 12, 0, 1, 250000, tzinfo=UTC).timestamp()
    outbox_repo.delete([row.id], log=[Acked(at, 1)])
    [logged] = _logged(outbox_repo)
    assert logged["started_at"] == pytest.approx(at, abs=1e-6)
