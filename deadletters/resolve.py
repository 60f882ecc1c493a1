"""What an operator does with a dead letter: replay it or ignore it.

``replay`` re-enqueues the dead letter's work as a fresh outbox row (attempt
count from zero, the same payload, script, trigger and run-as principal) and
marks it ``replayed`` in one transaction, so a replay happens at most once:
the resolve is atomic and a second one raises AlreadyResolved. The row runs
at the letter's depth, so replaying a letter of a write the depth limit
stopped runs that trigger's script once and its writes that fire triggers are
stopped again (new letters, caused by the replayed row): a replay never
restarts the cascade the limit ended. A queue message's letter is replayed
back onto its queue instead, as a new message (receive count 0), for the
queue's consumer to take like any other. ``ignore`` marks it ``ignored`` with a
note. Both record who and when. Admin actions and Python callers use these;
they reach the database only through repositories.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction

from deadletters.models import Resolution
from deadletters.pg_repository import PgDeadLetterRepo
from deadletters.repository import (
    AlreadyResolved,
    DeadLetterNotFound,
    DeadLetterRecord,
    DeadLetterRepo,
)
from outbox.storage.kinds import SourceKind
from outbox.storage.pg_repository import PgOutboxRepo
from outbox.storage.repository import NewOutboxRow, OutboxRepo
from picloud.db.storable import clean_text
from picloud.messaging import queues

MAX_NOTE_CHARS = 2_000  # an ignore note, as an operator writes it


def check_note(note: object) -> str:
    """`note` if it can be stored as given, else ValidationError saying why:
    an operator's note is input, refused rather than silently changed."""
    if not isinstance(note, str):
        raise ValidationError(f"The note must be a string, got {type(note).__name__}.")
    if len(note) > MAX_NOTE_CHARS:
        raise ValidationError(
            f"The note is {len(note)} characters long; at most {MAX_NOTE_CHARS} are allowed."
        )
    unstorable = clean_text(note)[1]
    if unstorable:
        raise ValidationError(
            f"The note contains {unstorable} NUL or unpaired surrogate character(s), "
            "which PostgreSQL cannot store; remove them."
        )
    return note


class CannotReplay(Exception):
    """The dead letter's work cannot run again (its script is gone)."""


@dataclass
class BulkReport:
    """What a bulk resolution did, for the operator."""

    done: list[uuid.UUID] = field(default_factory=list)
    already_resolved: list[uuid.UUID] = field(default_factory=list)
    refused: dict[uuid.UUID, str] = field(default_factory=dict)  # id -> why

    def summary(self, done: str) -> str:
        """One line for the operator; `done` says what became of the done
        ones ("3 dead letter(s) replayed"). At most five refusals are named."""
        parts = [done]
        if self.already_resolved:
            parts.append(
                f"{len(self.already_resolved)} were resolved meanwhile and left as they were"
            )
        for dead_letter_id, why in list(self.refused.items())[:5]:
            parts.append(f"{dead_letter_id} refused: {why}")
        return "; ".join(parts) + "."


class Resolver:
    def __init__(
        self,
        dead_letters: DeadLetterRepo,
        outbox: OutboxRepo,
        atomic: Callable[[], AbstractContextManager] = nullcontext,
        # Puts a queue message's body back on its queue: (app id, queue id,
        # body, depth) -> the new message's id, or None when the queue is gone.
        requeue: Callable[[uuid.UUID, uuid.UUID, object, int], int | None] = queues.requeue,
    ) -> None:
        self.dead_letters, self.outbox, self.atomic = dead_letters, outbox, atomic
        self.requeue = requeue

    def replay(self, dead_letter_id: uuid.UUID, by: uuid.UUID | None) -> DeadLetterRecord:
        """Enqueue the work again and mark the letter replayed; the new
        outbox row's id is in the resolution note."""
        with self.atomic():
            letter = self.dead_letters.get(dead_letter_id)
            if letter is None:
                raise DeadLetterNotFound(dead_letter_id)
            if letter.is_resolved:
                raise AlreadyResolved(letter)
            queued = queue_message(letter)
            if queued is not None:
                queue_id, body = queued
                try:
                    message_id = self.requeue(letter.app_id, queue_id, body, letter.depth)
                except ValidationError as exc:
                    why = "; ".join(exc.messages)
                    raise CannotReplay(f"dead letter {letter.id}: {why}") from None
                if message_id is None:
                    raise CannotReplay(f"dead letter {letter.id}: its queue was deleted")
                return self.dead_letters.resolve(
                    letter.id,
                    Resolution.REPLAYED,
                    by=by,
                    note=f"replayed onto its queue as message {message_id}",
                )
            if letter.script_id is None:
                raise CannotReplay(f"dead letter {letter.id}: its script was deleted")
            row = self.outbox.insert(
                NewOutboxRow(
                    app_id=letter.app_id,
                    source_kind=letter.source_kind,
                    script_id=letter.script_id,
                    run_as_principal=letter.run_as_principal,
                    payload=letter.payload,
                    trigger_id=letter.trigger_id,
                    depth=letter.depth,
                )
            )
            # The resolve is the guard: if another replay got there first,
            # it raises and this transaction (and its outbox row) rolls back.
            return self.dead_letters.resolve(
                letter.id, Resolution.REPLAYED, by=by, note=f"replayed as outbox row {row.id}"
            )

    def ignore(
        self, dead_letter_id: uuid.UUID, by: uuid.UUID | None, note: str = ""
    ) -> DeadLetterRecord:
        """Mark the letter ignored with `note`; ValidationError for a note
        that cannot be stored (check_note), before anything changes."""
        return self.dead_letters.resolve(
            dead_letter_id, Resolution.IGNORED, by=by, note=check_note(note)
        )

    def replay_all(self, ids: Iterable[uuid.UUID], by: uuid.UUID | None) -> BulkReport:
        return self._each(ids, lambda i: self.replay(i, by))

    def ignore_all(
        self, ids: Iterable[uuid.UUID], by: uuid.UUID | None, note: str = ""
    ) -> BulkReport:
        # One bad note refuses the whole batch, not each letter in turn.
        note = check_note(note)
        return self._each(ids, lambda i: self.ignore(i, by, note))

    @staticmethod
    def _each(ids: Iterable[uuid.UUID], resolve_one: Callable[[uuid.UUID], object]) -> BulkReport:
        # One transaction per letter: one that cannot be resolved does not
        # undo the others.
        report = BulkReport()
        for dead_letter_id in ids:
            try:
                resolve_one(dead_letter_id)
            except AlreadyResolved:
                report.already_resolved.append(dead_letter_id)
            except (CannotReplay, DeadLetterNotFound) as exc:
                report.refused[dead_letter_id] = str(exc)
            else:
                report.done.append(dead_letter_id)
        return report


def queue_message(letter: DeadLetterRecord) -> tuple[uuid.UUID, object] | None:
    """(queue id, body) of a queue message's dead letter, else None."""
    payload = letter.payload if isinstance(letter.payload, dict) else {}
    message = payload.get("message")
    if letter.source_kind != SourceKind.QUEUE or not isinstance(message, dict):
        return None
    try:
        return uuid.UUID(str(payload.get("queue_id"))), message.get("body")
    except ValueError:
        return None


def postgres_resolver() -> Resolver:

    return Resolver(PgDeadLetterRepo(), PgOutboxRepo(), transaction.atomic)
