"""OutboxRepo contract: PostgreSQL and in-memory behave the same."""

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from django.utils import timezone

from outbox.storage.repository import MAX_ERRORS_KEPT, NewOutboxRow
from picloud.db.storable import MAX_ERROR_CHARS
from tests.helpers import wait_for

LEASE = 60.0  # seconds: long enough that no test outlives it


@pytest.fixture
def new_row(world):
    def make(**kw):
        return NewOutboxRow(
            app_id=world.app_id,
            source_kind=kw.pop("source_kind", "kv"),
            script_id=world.script_id,
            run_as_principal=world.principal_id,
            payload=kw.pop("payload", {"key": "k1"}),
            **kw,
        )

    return make


def test_insert_then_get(outbox_repo, new_row, world):
    reply_to = uuid.uuid4()
    row = outbox_repo.insert(new_row(payload={"a": [1, "x"]}, depth=2, reply_to=reply_to))
    assert row.attempts == 0 and row.depth == 2 and row.reply_to == reply_to
    assert row.payload == {"a": [1, "x"]}
    assert row.errors == () and row.last_error is None
    assert row.due_at <= timezone.now()
    assert outbox_repo.get(row.id) == row
    assert outbox_repo.get(uuid.uuid4()) is None


def test_insert_refuses_unknown_source_kind_and_negative_depth(outbox_repo, new_row):
    with pytest.raises(ValueError, match="unknown source kind 'sms'; allowed: kv"):
        outbox_repo.insert(new_row(source_kind="sms"))
    with pytest.raises(ValueError, match="depth"):
        outbox_repo.insert(new_row(depth=-1))


def test_claim_takes_due_rows_bumps_attempts_and_leases(outbox_repo, new_row):
    due = outbox_repo.insert(new_row())
    future = outbox_repo.insert(new_row(due_at=timezone.now() + timedelta(hours=1)))
    before = timezone.now()
    claimed = outbox_repo.claim_due(limit=10, lease=LEASE)
    assert [r.id for r in claimed] == [due.id]
    assert claimed[0].attempts == 1
    # The row holds its lease; the claim says when it was due (how late it starts).
    stored = outbox_repo.get(due.id)
    assert stored.due_at >= before + timedelta(seconds=LEASE - 1)
    assert claimed[0].due_at == due.due_at
    assert stored == replace(claimed[0], due_at=stored.due_at)
    assert outbox_repo.claim_due(limit=10, lease=LEASE) == [], "leased rows are not claimable"
    assert outbox_repo.get(future.id).attempts == 0


def test_claim_respects_limit_and_takes_oldest_due_first(outbox_repo, new_row):
    now = timezone.now()
    ids = [outbox_repo.insert(new_row(due_at=now - timedelta(minutes=m))).id for m in (1, 3, 2)]
    first = outbox_repo.claim_due(limit=2, lease=LEASE)
    assert sorted(r.id for r in first) == sorted([ids[1], ids[2]])
    assert [r.id for r in outbox_repo.claim_due(limit=2, lease=LEASE)] == [ids[0]]


def test_row_comes_back_when_its_lease_runs_out(outbox_repo, new_row):
    row = outbox_repo.insert(new_row())
    assert len(outbox_repo.claim_due(limit=1, lease=0.05)) == 1
    again = wait_for(
        lambda: outbox_repo.claim_due(limit=1, lease=LEASE), timeout=5, what="the lease to expire"
    )
    assert again[0].id == row.id and again[0].attempts == 2


def test_claim_arguments_are_checked(outbox_repo):
    with pytest.raises(ValueError, match="limit"):
        outbox_repo.claim_due(limit=0, lease=1)
    with pytest.raises(ValueError, match="lease"):
        outbox_repo.claim_due(limit=1, lease=0)


def test_delete_acknowledges_a_batch(outbox_repo, new_row):
    rows = [outbox_repo.insert(new_row()) for _ in range(3)]
    assert outbox_repo.delete([rows[0].id, rows[1].id, uuid.uuid4()]) == 2
    assert outbox_repo.get(rows[0].id) is None and outbox_repo.get(rows[2].id) is not None
    assert outbox_repo.delete([]) == 0


def test_reschedule_records_each_error(outbox_repo, new_row):
    row = outbox_repo.insert(new_row())
    later = timezone.now() + timedelta(minutes=5)
    assert outbox_repo.reschedule(row.id, later, "boom 1")
    assert outbox_repo.reschedule(row.id, later, "boom 2")
    got = outbox_repo.get(row.id)
    assert got.due_at == later
    assert got.last_error == "boom 2"
    assert got.errors == ("boom 1", "boom 2")
    assert outbox_repo.claim_due(limit=1, lease=LEASE) == [], "rescheduled into the future"
    assert outbox_repo.reschedule(uuid.uuid4(), later, "x") is False


def test_reschedule_of_an_attempt_matches_only_that_claim_and_once(outbox_repo, new_row):
    row = outbox_repo.insert(new_row())
    now = timezone.now()
    assert outbox_repo.reschedule(row.id, now, "x", attempt=0) is False, "never claimed"
    (claimed,) = outbox_repo.claim_due(limit=1, lease=LEASE)
    assert outbox_repo.reschedule(row.id, now, "stale", attempt=claimed.attempts + 1) is False
    assert outbox_repo.reschedule(row.id, now, "boom", attempt=claimed.attempts)
    assert outbox_repo.reschedule(row.id, now, "boom", attempt=claimed.attempts) is False, (
        "the same settle again (its COMMIT's answer lost) matches nothing"
    )
    (again,) = outbox_repo.claim_due(limit=1, lease=LEASE)
    assert outbox_repo.reschedule(row.id, now, "late", attempt=claimed.attempts) is False, (
        "claimed again elsewhere: the first claim's settle leaves it alone"
    )
    assert outbox_repo.get(row.id).errors == ("boom",)
    assert outbox_repo.reschedule(row.id, now, "boom 2", attempt=again.attempts)


def test_rescheduled_row_is_claimable_when_due(outbox_repo, new_row):
    row = outbox_repo.insert(new_row())
    outbox_repo.reschedule(row.id, timezone.now() - timedelta(seconds=1), "retry me")
    assert [r.id for r in outbox_repo.claim_due(limit=1, lease=LEASE)] == [row.id]


def test_errors_are_bounded(outbox_repo, new_row):
    row = outbox_repo.insert(new_row())
    now = timezone.now()
    outbox_repo.reschedule(row.id, now, "x" * (MAX_ERROR_CHARS + 500))
    assert len(outbox_repo.get(row.id).last_error) == MAX_ERROR_CHARS
    for i in range(MAX_ERRORS_KEPT + 5):
        outbox_repo.reschedule(row.id, now, f"e{i}")
    errors = outbox_repo.get(row.id).errors
    assert len(errors) == MAX_ERRORS_KEPT
    assert errors[-1] == f"e{MAX_ERRORS_KEPT + 4}" and errors[0] == "e5"


def test_release_gives_rows_back_uncounted(outbox_repo, new_row):
    row = outbox_repo.insert(new_row())
    (claimed,) = outbox_repo.claim_due(limit=1, lease=LEASE)
    assert outbox_repo.release([claimed.id, uuid.uuid4()]) == 1
    again = outbox_repo.claim_due(limit=1, lease=LEASE)
    assert [r.id for r in again] == [row.id] and again[0].attempts == 1
    assert outbox_repo.release([]) == 0


def test_run_now_makes_waiting_rows_due_but_leaves_running_ones(outbox_repo, new_row):
    later = outbox_repo.insert(new_row(due_at=timezone.now() + timedelta(hours=1)))
    failed = outbox_repo.insert(new_row())
    running = outbox_repo.insert(new_row())
    (claimed,) = outbox_repo.claim_due(limit=1, lease=LEASE)
    assert claimed.id == failed.id or claimed.id == running.id
    if claimed.id == running.id:
        failed, running = running, failed
    outbox_repo.reschedule(failed.id, timezone.now() + timedelta(hours=1), "boom")
    (running_claim,) = outbox_repo.claim_due(limit=1, lease=LEASE)
    assert running_claim.id == running.id
    ids = [later.id, failed.id, running.id, uuid.uuid4()]
    assert outbox_repo.run_now(ids) == 2, "the waiting and the rescheduled row, not the running one"
    due = {r.id for r in outbox_repo.claim_due(limit=10, lease=LEASE)}
    assert due == {later.id, failed.id}
    assert outbox_repo.run_now([]) == 0


def test_next_due_at_and_stats(outbox_repo, new_row):
    assert outbox_repo.next_due_at() is None
    assert outbox_repo.stats() == (0, None)
    now = timezone.now()
    outbox_repo.insert(new_row(due_at=now - timedelta(seconds=30)))
    outbox_repo.insert(new_row(due_at=now - timedelta(seconds=10)))
    future = now + timedelta(hours=1)
    outbox_repo.insert(new_row(due_at=future))
    assert outbox_repo.next_due_at() == now - timedelta(seconds=30)
    due, oldest = outbox_repo.stats()
    assert due == 2 and oldest == now - timedelta(seconds=30)
    outbox_repo.claim_due(limit=2, lease=LEASE)
    lease_end = outbox_repo.next_due_at()
    assert now + timedelta(seconds=LEASE - 5) < lease_end < future, (
        "leased rows are due again later"
    )
    assert outbox_repo.stats() == (0, None)


@pytest.fixture(params=["memory", "postgres"])
def counter_store(request, transactional_db):
    from outbox.storage.memory_repository import MemoryCounterStore
    from outbox.storage.pg_repository import PgCounterStore

    return MemoryCounterStore() if request.param == "memory" else PgCounterStore()


def test_counters_add_up(counter_store):
    # The table is not a model, so other tests' counts may be there: compare deltas.
    before = counter_store.read()
    counter_store.add({"succeeded": 3, "retried": 0})
    counter_store.add({"succeeded": 2, "dead_lettered": 1})
    after = counter_store.read()
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta == {"succeeded": 5, "dead_lettered": 1}


def test_claim_acknowledges_the_previous_batch_in_the_same_call(outbox_repo, new_row):
    first = outbox_repo.insert(new_row())
    (claimed,) = outbox_repo.claim_due(limit=1, lease=LEASE)
    second = outbox_repo.insert(new_row())
    again = outbox_repo.claim_due(limit=5, lease=LEASE, ack=[claimed.id])
    assert [r.id for r in again] == [second.id]
    assert outbox_repo.get(first.id) is None, "the acknowledged row is gone"
