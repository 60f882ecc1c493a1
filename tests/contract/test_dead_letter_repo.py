"""DeadLetterRepo and AbandonedRepo contracts: PostgreSQL and in-memory agree."""

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from deadletters.repository import (
    MAX_SUMMARY_CHARS,
    AlreadyResolved,
    DeadLetterFilter,
    DeadLetterNotFound,
    NewAbandonedExecution,
    NewDeadLetter,
)


@pytest.fixture
def new_letter(world):
    def make(**kw):
        return NewDeadLetter(
            app_id=kw.pop("app_id", world.app_id),
            source_kind=kw.pop("source_kind", "kv"),
            script_id=world.script_id,
            trigger_id=kw.pop("trigger_id", None),
            run_as_principal=world.principal_id,
            outbox_id=kw.pop("outbox_id", uuid.uuid4()),
            payload=kw.pop("payload", {"collection": "c", "key": "k"}),
            last_error=kw.pop("last_error", "boom"),
            errors=("boom",),
            attempts=5,
            depth=0,
            **kw,
        )

    return make


def test_insert_then_get(dead_letter_repo, new_letter):
    letter = dead_letter_repo.insert(new_letter())
    assert not letter.is_resolved
    assert (letter.resolved_at, letter.resolved_by, letter.note) == (None, None, "")
    assert letter.errors == ("boom",) and letter.payload == {"collection": "c", "key": "k"}
    assert dead_letter_repo.get(letter.id) == letter
    assert dead_letter_repo.get(uuid.uuid4()) is None


@pytest.fixture
def two_triggers(world):
    """Two triggers of world's app (dead_letters.trigger_id references them)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO triggers (app_id, kind, script_id, name, registered_by_principal) "
            "VALUES (%(app)s, 'kv', %(script)s, 'first', %(by)s), "
            "(%(app)s, 'kv', %(script)s, 'second', %(by)s) RETURNING id",
            {"app": world.app_id, "script": world.script_id, "by": world.principal_id},
        )
        return [row[0] for row in cursor.fetchall()]


def test_a_stopped_event_is_recorded_once_per_cause_and_trigger(
    dead_letter_repo, new_letter, two_triggers
):
    first, second = two_triggers
    cause = uuid.uuid4()

    def stopped(trigger_id, cause_outbox_id=cause):
        return new_letter(trigger_id=trigger_id, outbox_id=None, cause_outbox_id=cause_outbox_id)

    letter = dead_letter_repo.insert(stopped(first))
    assert (letter.outbox_id, letter.cause_outbox_id, letter.trigger_id) == (None, cause, first)
    assert dead_letter_repo.insert(stopped(first)) is None, (
        "the same event, cause and trigger again"
    )
    assert dead_letter_repo.insert(stopped(second)) is not None, "another trigger of that cause"
    assert dead_letter_repo.insert(stopped(first, uuid.uuid4())) is not None, "another cause"
    assert len(dead_letter_repo.list()) == 3
    assert dead_letter_repo.get(letter.id) == letter, "the first one stands"


def test_each_stopped_event_of_a_cause_and_trigger_is_recorded_once(
    dead_letter_repo, new_letter, two_triggers
):
    """A causing row that writes several keys past the depth limit leaves one
    letter per (trigger, collection, key): every distinct event is kept."""
    first, second = two_triggers
    cause = uuid.uuid4()

    def stopped(trigger_id, collection, key):
        return new_letter(
            trigger_id=trigger_id,
            outbox_id=None,
            cause_outbox_id=cause,
            payload={"collection": collection, "key": key, "op": "insert", "new": 1},
        )

    events = [("c", "k0"), ("c", "k1"), ("c", "k2"), ("d", "k0")]
    for trigger_id in (first, second):
        for collection, key in events:
            assert dead_letter_repo.insert(stopped(trigger_id, collection, key)) is not None
    assert dead_letter_repo.insert(stopped(first, "c", "k1")) is None, "the same event again"
    assert dead_letter_repo.insert(stopped(second, "d", "k0")) is None, "the same event again"
    recorded = {
        (d.trigger_id, d.payload["collection"], d.payload["key"]) for d in dead_letter_repo.list()
    }
    assert len(dead_letter_repo.list()) == len(recorded) == 8


def test_stopped_letters_naming_no_collection_or_key_are_never_merged(
    dead_letter_repo, new_letter, two_triggers
):
    # As NULLs in a unique index: a letter is dropped only as a proven repeat.
    cause = uuid.uuid4()
    for payload in ({"key": "k"}, {"collection": "c"}, {}):
        for _ in range(2):
            letter = new_letter(
                trigger_id=two_triggers[0], outbox_id=None, cause_outbox_id=cause, payload=payload
            )
            assert dead_letter_repo.insert(letter) is not None, payload
    assert len(dead_letter_repo.list()) == 6


def test_letters_without_a_cause_or_trigger_are_never_merged(
    dead_letter_repo, new_letter, two_triggers
):
    cause = uuid.uuid4()
    for _ in range(2):
        assert dead_letter_repo.insert(new_letter(trigger_id=two_triggers[0])) is not None
        assert dead_letter_repo.insert(new_letter(cause_outbox_id=cause)) is not None
    assert len(dead_letter_repo.list()) == 4


def test_insert_refuses_unknown_source_kind(dead_letter_repo, new_letter):
    with pytest.raises(ValueError, match="unknown source kind"):
        dead_letter_repo.insert(new_letter(source_kind="fax"))


def test_unresolved_count_per_app_set_and_all(dead_letter_repo, new_letter, world):
    a = [dead_letter_repo.insert(new_letter()) for _ in range(3)]
    dead_letter_repo.insert(new_letter(app_id=world.other_app_id))
    dead_letter_repo.resolve(a[0].id, "ignored", by=world.principal_id)
    assert dead_letter_repo.unresolved_count(world.app_id) == 2
    assert dead_letter_repo.unresolved_count(world.other_app_id) == 1
    assert dead_letter_repo.unresolved_count() == 3
    assert dead_letter_repo.unresolved_count(app_ids=[world.app_id, world.other_app_id]) == 3
    assert dead_letter_repo.unresolved_count(app_ids=[]) == 0
    with pytest.raises(TypeError):
        dead_letter_repo.unresolved_count(world.app_id, app_ids=[world.app_id])


def test_resolve_records_who_when_and_note_once(dead_letter_repo, new_letter, world):
    letter = dead_letter_repo.insert(new_letter())
    before = timezone.now()
    resolved = dead_letter_repo.resolve(letter.id, "replayed", by=world.principal_id, note="fixed")
    assert resolved.resolution == "replayed" and resolved.note == "fixed"
    assert resolved.resolved_by == world.principal_id
    assert resolved.resolved_at >= before - timedelta(seconds=1)
    with pytest.raises(AlreadyResolved, match="already resolved as 'replayed'"):
        dead_letter_repo.resolve(letter.id, "ignored", by=world.principal_id)
    assert dead_letter_repo.get(letter.id) == resolved, "the first resolution stands"


def test_resolve_refuses_unknown_resolution_and_missing_letter(dead_letter_repo, new_letter):
    letter = dead_letter_repo.insert(new_letter())
    with pytest.raises(
        ValueError, match="allowed: replayed, ignored, handled_by_script, handler_failed"
    ):
        dead_letter_repo.resolve(letter.id, "deleted", by=None)
    with pytest.raises(DeadLetterNotFound):
        dead_letter_repo.resolve(uuid.uuid4(), "ignored", by=None)


def test_system_resolutions_have_no_principal(dead_letter_repo, new_letter):
    letter = dead_letter_repo.insert(new_letter())
    assert dead_letter_repo.resolve(letter.id, "handled_by_script", by=None).resolved_by is None


def test_list_filters_and_pages_newest_first(dead_letter_repo, new_letter, world):
    letters = [dead_letter_repo.insert(new_letter(last_error=f"e{i}")) for i in range(5)]
    dead_letter_repo.insert(new_letter(app_id=world.other_app_id, source_kind="invoke"))
    dead_letter_repo.resolve(letters[1].id, "ignored", by=None)
    mine = DeadLetterFilter(app_ids=[world.app_id])

    page1 = dead_letter_repo.list(mine, limit=2)
    page2 = dead_letter_repo.list(mine, limit=2, offset=2)
    page3 = dead_letter_repo.list(mine, limit=2, offset=4)
    assert [d.last_error for d in page1 + page2 + page3] == ["e4", "e3", "e2", "e1", "e0"]

    unresolved = dead_letter_repo.list(DeadLetterFilter(app_ids=[world.app_id], resolved=False))
    assert [d.last_error for d in unresolved] == ["e4", "e3", "e2", "e0"]
    ignored = dead_letter_repo.list(DeadLetterFilter(resolution="ignored"))
    assert [d.id for d in ignored] == [letters[1].id]
    assert len(dead_letter_repo.list(DeadLetterFilter(source_kind="invoke"))) == 1
    assert len(dead_letter_repo.list()) == 6
    assert dead_letter_repo.list(DeadLetterFilter(created_before=letters[0].created_at)) == []
    with pytest.raises(ValueError, match="limit"):
        dead_letter_repo.list(limit=0)


def test_gc_deletes_old_resolved_in_batches_and_keeps_unresolved(dead_letter_repo, new_letter):
    resolved = [dead_letter_repo.insert(new_letter()) for _ in range(5)]
    for d in resolved:
        dead_letter_repo.resolve(d.id, "ignored", by=None)
    open_letter = dead_letter_repo.insert(new_letter())
    progress = []
    later = timezone.now() + timedelta(seconds=5)
    assert dead_letter_repo.gc_count(later) == 5
    assert dead_letter_repo.gc_count(later, include_unresolved=True) == 6
    assert dead_letter_repo.gc_count(timezone.now() - timedelta(days=1)) == 0

    deleted = dead_letter_repo.gc(
        timezone.now() + timedelta(seconds=5), batch_size=2, on_batch=progress.append
    )

    assert deleted == 5 and progress == [2, 4, 5]
    assert dead_letter_repo.get(open_letter.id) is not None
    assert dead_letter_repo.gc(timezone.now() + timedelta(seconds=5), batch_size=2) == 0
    assert (
        dead_letter_repo.gc(
            timezone.now() + timedelta(seconds=5), batch_size=2, include_unresolved=True
        )
        == 1
    )


def test_gc_keeps_recent_resolutions(dead_letter_repo, new_letter):
    letter = dead_letter_repo.insert(new_letter())
    dead_letter_repo.resolve(letter.id, "ignored", by=None)
    assert dead_letter_repo.gc(timezone.now() - timedelta(days=1), batch_size=10) == 0
    assert dead_letter_repo.get(letter.id) is not None


def _abandoned(world, summary="late result"):
    return NewAbandonedExecution(
        app_id=world.app_id,
        outbox_id=uuid.uuid4(),
        script_id=world.script_id,
        inbox_id=uuid.uuid4(),
        status_code=200,
        result_summary=summary,
    )


def test_abandoned_insert_caps_summary_and_lists_newest_first(abandoned_repo, world):
    first = abandoned_repo.insert(_abandoned(world, "x" * (MAX_SUMMARY_CHARS * 3)))
    second = abandoned_repo.insert(_abandoned(world, None))
    assert len(first.result_summary) == MAX_SUMMARY_CHARS
    assert second.result_summary is None
    assert [a.id for a in abandoned_repo.list(world.app_id)] == [second.id, first.id]
    assert abandoned_repo.list(world.other_app_id) == []


def test_abandoned_gc_in_batches(abandoned_repo, world):
    for _ in range(3):
        abandoned_repo.insert(_abandoned(world))
    progress = []
    assert abandoned_repo.gc_count(timezone.now() - timedelta(days=1)) == 0
    assert abandoned_repo.gc_count(timezone.now() + timedelta(seconds=5)) == 3
    assert abandoned_repo.gc(timezone.now() - timedelta(days=1), batch_size=2) == 0
    assert (
        abandoned_repo.gc(
            timezone.now() + timedelta(seconds=5), batch_size=2, on_batch=progress.append
        )
        == 3
    )
    assert progress == [2, 3]
    assert abandoned_repo.list() == []
