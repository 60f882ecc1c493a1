"""The rules of a trigger, in one place, with one message each.

Every way of writing a trigger checks these: the repositories (through
``triggers.repository.validate_trigger``; the Python API, the demo, and
admin's saves all write through ``PgTriggerRepo``), and the models'
``clean_fields``/``clean`` (so ``full_clean`` and admin's forms). Each rule
raises ValidationError keyed by the field it is about, in the repository's
names (``script_id``, ``source_trigger_id``; the models rename them to their
fields), saying what is wrong and what is allowed. The collection pattern
and ops rules live with the matcher (triggers/matching.py) and are only
keyed here.

The CHECKs and keys of triggers/sql/ are the last line: they hold whatever
gets past these (a race, a hand-written UPDATE).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError

from picloud.db.storable import check_json
from triggers.kinds import DEAD_LETTER_FILTER_KINDS, TriggerKind
from triggers.matching import validate_collection_pattern, validate_ops
from triggers.schedule import Schedule, ScheduleError
from triggers.ticks import MAX_CATCHUP_WINDOW, Catchup, Overlap

NAME_MAX_LENGTH = 200  # characters (triggers.name is VARCHAR(200))
MAX_ATTEMPTS = 100  # attempts per row at most
MAX_DELAY_MS = 86_400_000  # ms (one day): the longest retry delay
# Every kind has an event source now (email was the last), so every kind
# may be created.
CREATABLE_KINDS = tuple(TriggerKind)
# The details each kind has, by the repository's name for them.
DETAILS = {
    TriggerKind.KV: "kv",
    TriggerKind.CRON: "cron",
    TriggerKind.PUBSUB: "pubsub",
    TriggerKind.QUEUE: "queue",
    TriggerKind.EMAIL: "email",
    TriggerKind.DEAD_LETTER: "dead_letter",
}
# A queue trigger's settings: (lowest, highest) of each.
QUEUE_RANGES = {
    "batch_size": (1, 100),
    "max_batch_wait_ms": (0, 60_000),
    "max_concurrency": (1, 100),
    "max_receives": (1, 100),
}
CRON_PAYLOAD_MAX_BYTES = 65_536  # a cron trigger's static payload, as JSON

# Messages admin's form fields give for their own checks too (they run
# before the model's): Django fills in %(limit_value)d and %(show_value)d.
NAME_REQUIRED = "A trigger needs a name."
NAME_TOO_LONG = (
    "A trigger's name has at most %(limit_value)d characters; this one has %(show_value)d."
)
KV_DETAILS_NEEDED = "A KV write trigger needs its details: a collection pattern and ops."
CRON_DETAILS_NEEDED = "A cron trigger needs its details: at least a schedule."
PUBSUB_DETAILS_NEEDED = "A pub/sub trigger needs its details: the topic pattern it subscribes to."
QUEUE_DETAILS_NEEDED = "A queue trigger needs its details: at least the queue it consumes."
EMAIL_DETAILS_NEEDED = "An email trigger needs its details: the local part pattern it fires for."
DETAILS_NEEDED = {
    TriggerKind.KV: KV_DETAILS_NEEDED,
    TriggerKind.CRON: CRON_DETAILS_NEEDED,
    TriggerKind.PUBSUB: PUBSUB_DETAILS_NEEDED,
    TriggerKind.QUEUE: QUEUE_DETAILS_NEEDED,
    TriggerKind.EMAIL: EMAIL_DETAILS_NEEDED,
}
MAX_LOCAL_PART_LENGTH = 64  # characters: RFC 5321's limit on a local part
# Characters of a local part an email trigger may name: RFC 5322's atext
# and the dot, lower-case (recipients are lower-cased before matching), plus
# ':' for prefix patterns; not '+', which starts the tag routing drops.
LOCAL_PART_CHARS = re.compile(r"[a-z0-9!#$%&'*/=?^_`{|}~.:-]+")
LOCAL_PART_RULE = (
    "allowed: '*' (every recipient), 'prefix:*' (local parts starting with 'prefix:'), "
    "or an exact local part such as 'orders'; lower-case letters, digits, '.', '-', '_' "
    "and the other characters an unquoted address allows, but not '+', at most 64 "
    "characters (the +tag of a recipient is not matched: 'orders' fires for "
    "orders+anything too)"
)


@dataclass(frozen=True)
class Ref:
    """A row a trigger names (its script, the trigger a filter names), as
    the rules see it."""

    app_id: uuid.UUID
    label: str  # how messages name it: a script's name, a trigger's "app/name"
    kind: str | None = None  # a trigger's kind


class DuplicateTriggerName(ValidationError):
    def __init__(self, name: str):
        super().__init__(
            {"name": f"A trigger named {name!r} already exists in this app; choose another name."}
        )


class ForeignScript(ValidationError):
    def __init__(self, script_id: uuid.UUID, script: Ref | None, app_slug: str):
        what = (
            f"Script {script.label!r} belongs to another app"
            if script
            else f"No script {script_id}"
        )
        super().__init__(
            {
                "script_id": f"{what}; choose a script of app {app_slug!r}: a trigger runs "
                "only a script of its own app."
            }
        )


class ForeignSourceTrigger(ValidationError):
    def __init__(self, source_trigger_id: uuid.UUID, source: Ref | None, app_slug: str):
        what = (
            f"Trigger {source.label} belongs to another app"
            if source
            else f"No trigger {source_trigger_id}"
        )
        super().__init__(
            {
                "source_trigger_id": f"{what}; choose a trigger of app {app_slug!r}, or leave "
                "it empty for any: a dead-letter trigger filters only on a trigger of its own app."
            }
        )


def check_kind(kind: object) -> None:
    """A new trigger's kind (it never changes after)."""
    if kind not in CREATABLE_KINDS:
        allowed = ", ".join(CREATABLE_KINDS)
        raise ValidationError({"kind": f"Unknown kind {kind!r}; allowed: {allowed}."})


def check_name(name: object) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValidationError({"name": ValidationError(NAME_REQUIRED, code="required")})
    if len(name) > NAME_MAX_LENGTH:
        params = {"limit_value": NAME_MAX_LENGTH, "show_value": len(name), "value": name}
        raise ValidationError(
            {"name": ValidationError(NAME_TOO_LONG, code="max_length", params=params)}
        )


def check_name_free(name: str, *, taken: bool) -> None:
    """`taken`: another trigger of the app has this name."""
    if taken:
        raise DuplicateTriggerName(name)


def check_script(
    script_id: uuid.UUID, script: Ref | None, app_id: uuid.UUID, app_slug: str
) -> None:
    """The script (None: no such script) is of the trigger's own app."""
    if script is None or script.app_id != app_id:
        raise ForeignScript(script_id, script, app_slug)


def check_max_attempts(value: object) -> None:
    if value is not None and not _int_between(value, 1, MAX_ATTEMPTS):
        raise ValidationError(
            {
                "max_attempts": f"Allowed: 1 to {MAX_ATTEMPTS} attempts, or empty (None) for "
                "the PICLOUD_TRIGGER_RETRY_MAX_ATTEMPTS default."
            }
        )


def check_delay(field: str, value: object) -> None:
    """`field`: retry_base_delay_ms or retry_max_delay_ms."""
    if value is not None and not _int_between(value, 1, MAX_DELAY_MS):
        raise ValidationError(
            {
                field: f"Allowed: 1 to {MAX_DELAY_MS} ms (one day), or empty (None) for the "
                f"PICLOUD_TRIGGER_{field.upper()} default."
            }
        )


def check_delay_order(base: object, cap: object) -> None:
    """Checked once both are in range."""
    if isinstance(base, int) and isinstance(cap, int) and cap < base:
        raise ValidationError(
            {"retry_max_delay_ms": f"Must be at least the base delay ({base} ms) or empty."}
        )


def check_details(kind: str, details: str, present: bool) -> None:
    """`details` (a value of DETAILS): whether a trigger of `kind` may have
    them (`present`), or must. A dead-letter trigger without its filters
    matches any dead letter, so it alone may go without."""
    own = DETAILS.get(kind) == details
    if own and not present and kind in DETAILS_NEEDED:
        raise ValidationError({details: DETAILS_NEEDED[kind]})
    if present and not own:
        owner = next(k for k, d in DETAILS.items() if d == details)
        raise ValidationError(
            {
                details: f"Only {owner.label} triggers have these details (kind "
                f"{owner.value!r}); clear them or choose that kind."
            }
        )


def check_collection(pattern: object) -> None:
    _keyed("collection", validate_collection_pattern, pattern)


def check_ops(ops: object) -> None:
    _keyed("ops", validate_ops, ops)


def check_topic(pattern: object) -> None:
    """A pubsub trigger's topic pattern: the rule of a KV collection pattern."""
    try:
        validate_collection_pattern(pattern)
    except ValidationError as e:
        messages = [m.replace("Collection pattern", "Topic pattern") for m in e.messages]
        messages = [m.replace("collection", "topic") for m in messages]
        raise ValidationError({"topic": messages}) from e


def check_local_part(pattern: object) -> None:
    """An email trigger's local part pattern: the rule of a KV collection
    pattern, over the characters a lower-cased local part can hold."""
    valid = (
        isinstance(pattern, str)
        and len(pattern) <= MAX_LOCAL_PART_LENGTH
        and LOCAL_PART_CHARS.fullmatch(pattern) is not None
    )
    if valid:
        try:
            validate_collection_pattern(pattern)
        except ValidationError:
            valid = False
    if not valid:
        shown = repr(pattern) if isinstance(pattern, str) and pattern else "An empty pattern"
        raise ValidationError(
            {"local_part": f"{shown[:100]} is not a valid local part pattern; {LOCAL_PART_RULE}."}
        )


def check_queue(spec, queue: Ref | None, consumer: str | None, app_id, app_slug: str) -> None:
    """A queue trigger's details (a triggers.repository.QueueSpec): its queue
    (`queue`; None: no such queue) is of the trigger's app and consumed by
    no other trigger (`consumer`, that trigger's name), and each setting is
    in its range."""
    errors = Errors()
    if queue is None or queue.app_id != app_id:
        # One answer for a queue of another app and none at all: nothing of
        # another tenant's queues (their names, that one exists) shows here.
        errors.add(
            ValidationError(
                {
                    "queue_id": f"App {app_slug!r} has no queue {spec.queue_id}; choose a "
                    "queue of its own: a queue trigger consumes only a queue of its own app."
                }
            )
        )
    elif consumer is not None:
        errors.add(
            ValidationError(
                {
                    "queue_id": f"Queue {queue.label!r} is consumed by trigger {consumer!r} "
                    "already; a queue has one consumer trigger (delete that one or point it at "
                    "another queue first)."
                }
            )
        )
    for field, (low, high) in QUEUE_RANGES.items():
        value = getattr(spec, field)
        if not _int_between(value, low, high):
            errors.add(ValidationError({field: f"Allowed: {low} to {high}; got {value!r}."}))
    errors.raise_any()


def check_no_attempts_for_queue(kind: str, max_attempts: object) -> None:
    """A queue trigger counts tries per message (max_receives), not per row."""
    if kind == TriggerKind.QUEUE and max_attempts is not None:
        raise ValidationError(
            {
                "max_attempts": "A queue trigger retries each message up to its max_receives; "
                "leave max attempts empty."
            }
        )


def check_source_kind(source_kind: object) -> None:
    allowed = [k.value for k in DEAD_LETTER_FILTER_KINDS]
    if source_kind is not None and source_kind not in allowed:
        raise ValidationError(
            {
                "source_kind": f"Unknown source kind {source_kind!r}; allowed: "
                f"{', '.join(allowed)}, or empty for any."
            }
        )


def check_source(source_id: uuid.UUID | None, source: Ref | None, app_id, app_slug: str) -> None:
    """The trigger a dead-letter filter names (`source`; None: no such
    trigger) is of the filter's own app, and not a dead-letter trigger: those
    make no dead letters, so the filter would never match."""
    if source_id is None:
        return
    if source is None or source.app_id != app_id:
        raise ForeignSourceTrigger(source_id, source, app_slug)
    if source.kind == TriggerKind.DEAD_LETTER:
        raise ValidationError(
            {
                "source_trigger_id": f"Trigger {source.label} is a dead-letter trigger, and "
                "their failures make no dead letters; choose a trigger of another kind, or "
                "leave it empty for any."
            }
        )


def check_cron(spec) -> None:
    """A cron trigger's details (a triggers.repository.CronSpec), each field
    keyed by its name: the schedule and timezone as triggers.schedule reads
    them, the policies from their vocabularies, the window in range, the
    payload a JSON object of bounded size."""
    errors = Errors()
    with errors.check():
        try:
            Schedule.parse(spec.schedule, spec.timezone)
        except ScheduleError as e:
            raise ValidationError({e.field: e.message}) from None
    for field, vocabulary in (("catchup", Catchup), ("overlap", Overlap)):
        value = getattr(spec, field)
        if value not in {v.value for v in vocabulary}:
            errors.add(
                ValidationError(
                    {
                        field: f"Unknown {field} policy {value!r}; allowed: "
                        f"{', '.join(v.value for v in vocabulary)}."
                    }
                )
            )
    window = int(MAX_CATCHUP_WINDOW.total_seconds())
    if not _int_between(spec.catchup_window_s, 0, window):
        errors.add(
            ValidationError(
                {
                    "catchup_window_s": f"Allowed: 0 to {window} seconds (7 days); "
                    f"got {spec.catchup_window_s!r}."
                }
            )
        )
    if not isinstance(spec.paused, bool):
        errors.add(ValidationError({"paused": "Must be true or false."}))
    with errors.check():
        _check_payload(spec.payload)
    errors.raise_any()


def _check_payload(payload: object) -> None:
    if not isinstance(payload, dict):
        raise ValidationError(
            {"payload": f"Must be a JSON object ({{...}}); got {type(payload).__name__}."}
        )
    try:
        check_json(payload)  # what PostgreSQL stores as given: no NUL, no lone surrogate
        size = len(json.dumps(payload, allow_nan=False).encode())
    except (TypeError, ValueError) as e:
        raise ValidationError({"payload": f"Must be plain JSON: {e}."}) from None
    if size > CRON_PAYLOAD_MAX_BYTES:
        raise ValidationError(
            {"payload": f"At most {CRON_PAYLOAD_MAX_BYTES} bytes as JSON; this is {size}."}
        )


class Errors:
    """Gathers the rules' errors field by field, as full_clean reports them;
    `rename` maps the rules' field names to the caller's."""

    def __init__(self, rename: Mapping[str, str] | None = None) -> None:
        self.rename = rename or {}
        self.errors: dict[str, list[ValidationError]] = {}

    @contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except ValidationError as e:
            self.add(e)

    def add(self, error: ValidationError) -> None:
        by_field = error.error_dict if hasattr(error, "error_dict") else {NON_FIELD_ERRORS: [error]}
        for field, errors in by_field.items():
            self.errors.setdefault(self.rename.get(field, field), []).extend(errors)

    def has(self, field: str) -> bool:
        return self.rename.get(field, field) in self.errors

    def raise_any(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)


def _int_between(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _keyed(field: str, validate, value: object) -> None:
    try:
        validate(value)
    except ValidationError as e:
        raise ValidationError({field: e.error_list}) from e
