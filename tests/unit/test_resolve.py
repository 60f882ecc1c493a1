"""Replay and ignore on the in-memory repositories."""

import uuid

import pytest
from django.core.exceptions import ValidationError

from deadletters.memory_repository import MemoryDeadLetterRepo
from deadletters.repository import AlreadyResolved, NewDeadLetter
from deadletters.resolve import MAX_NOTE_CHARS, Resolver
from outbox.storage.memory_repository import MemoryOutboxRepo

APP, SCRIPT, TRIGGER, PRINCIPAL, OPERATOR = (uuid.uuid4() for _ in range(5))


@pytest.fixture
def world():
    letters, outbox = MemoryDeadLetterRepo(), MemoryOutboxRepo()
    return letters, outbox, Resolver(letters, outbox)


def letter(repo, script=SCRIPT):
    return repo.insert(
        NewDeadLetter(
            app_id=APP,
            source_kind="kv",
            script_id=script,
            trigger_id=TRIGGER,
            run_as_principal=PRINCIPAL,
            outbox_id=uuid.uuid4(),
            payload={"order": 7},
            last_error="boom",
            errors=("boom",),
            attempts=3,
            depth=1,
        )
    )


def test_replay_enqueues_the_same_work_afresh_and_records_who(world):
    letters, outbox, resolver = world
    dead = letter(letters)
    resolved = resolver.replay(dead.id, by=OPERATOR)
    (row,) = outbox.rows.values()
    assert (row.app_id, row.script_id, row.trigger_id, row.run_as_principal) == (
        APP,
        SCRIPT,
        TRIGGER,
        PRINCIPAL,
    )
    assert (row.payload, row.depth, row.attempts, row.source_kind) == ({"order": 7}, 1, 0, "kv")
    assert (resolved.resolution, resolved.resolved_by) == ("replayed", OPERATOR)
    assert resolved.resolved_at is not None and str(row.id) in resolved.note


def test_a_second_replay_is_refused_and_enqueues_nothing(world):
    letters, outbox, resolver = world
    dead = letter(letters)
    resolver.replay(dead.id, by=OPERATOR)
    with pytest.raises(AlreadyResolved):
        resolver.replay(dead.id, by=OPERATOR)
    assert len(outbox.rows) == 1


def test_ignore_records_the_note(world):
    letters, _outbox, resolver = world
    dead = letter(letters)
    resolved = resolver.ignore(dead.id, by=OPERATOR, note="known outage")
    assert (resolved.resolution, resolved.note, resolved.resolved_by) == (
        "ignored",
        "known outage",
        OPERATOR,
    )


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("bad\x00note", "contains 1 NUL or unpaired surrogate"),
        ("\udc80 and \x00", "contains 2 NUL or unpaired surrogate"),
        ("n" * (MAX_NOTE_CHARS + 1), f"{MAX_NOTE_CHARS + 1} characters long; at most"),
    ],
)
def test_a_note_that_cannot_be_stored_is_refused_saying_why(world, note, message):
    letters, _outbox, resolver = world
    dead = letter(letters)
    with pytest.raises(ValidationError, match=message):
        resolver.ignore(dead.id, by=OPERATOR, note=note)
    with pytest.raises(ValidationError, match=message):
        resolver.ignore_all([dead.id], by=OPERATOR, note=note)
    assert letters.get(dead.id).resolution is None, "a refused note resolves nothing"


def test_bulk_reports_each_outcome(world):
    letters, outbox, resolver = world
    fine, done_before, orphan = letter(letters), letter(letters), letter(letters, script=None)
    resolver.ignore(done_before.id, by=None)
    report = resolver.replay_all([fine.id, done_before.id, orphan.id, uuid.uuid4()], by=OPERATOR)
    assert report.done == [fine.id]
    assert report.already_resolved == [done_before.id]
    assert orphan.id in report.refused
    assert "script was deleted" in report.refused[orphan.id]
    assert len(report.refused) == 2, "the unknown id is refused too"
    assert len(outbox.rows) == 1
