"""One set of trigger rules (triggers/rules.py), one message per broken rule,
whichever way a trigger is written: the repository (the Python API, the
demo, admin's saves), the models' full_clean, and admin's forms.

Each row of RULES breaks one rule; every path that can express it must
refuse it with the same messages, on its name for the field. A path marked
None cannot express it (admin does not offer the value; the model has no
field for it).
"""

from dataclasses import dataclass, replace
from uuid import UUID, uuid4

import pytest
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.urls import reverse

from tests.factories import AppFactory, ScriptFactory, UserFactory, kv_trigger
from tests.helpers import trigger_inlines
from triggers.models import DeadLetterTriggerDetails, KvTriggerDetails, Trigger
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import DeadLetterSpec, KvSpec, NewTrigger

pytestmark = pytest.mark.django_db

INLINES = trigger_inlines()


@dataclass(frozen=True)
class Spec:
    """A trigger as every path can state it; `script` and `source` name
    rows of the world fixture (or hold a UUID of no row)."""

    name: str = "new"
    kind: str = "kv"
    script: str = "script"
    max_attempts: int | None = None
    retry_base_delay_ms: int | None = None
    retry_max_delay_ms: int | None = None
    kv: tuple[str, tuple[str, ...]] | None = ("orders:*", ("insert",))
    dead_letter: tuple[str | None, str | UUID | None] | None = None


DL = Spec(kind="dead_letter", kv=None, dead_letter=(None, None))
MISSING = uuid4()


@dataclass(frozen=True)
class Rule:
    id: str
    spec: Spec
    phrase: str  # what the message says, whatever else it says
    model: str | None  # the field full_clean names, or None
    repo: str  # the field the repository names
    admin: str | None  # the field admin's form names, or None


RULES = [
    Rule("name blank", Spec(name="   "), "needs a name", "name", "name", "name"),
    Rule("name too long", Spec(name="x" * 201), "at most 200", "name", "name", "name"),
    Rule("name taken", Spec(name="taken"), "already exists", "name", "name", "name"),
    Rule("kind unknown", Spec(kind="webhook", kv=None), "Unknown kind", "kind", "kind", None),
    Rule("script of another app", Spec(script="their_script"), "another app", "script", "script_id", "script"),
    Rule("no such script", Spec(script=MISSING), "No script", None, "script_id", None),
    Rule("max_attempts low", Spec(max_attempts=0), "1 to 100", "max_attempts", "max_attempts", "max_attempts"),
    Rule("max_attempts high", Spec(max_attempts=101), "1 to 100", "max_attempts", "max_attempts", "max_attempts"),
    Rule("base delay low", Spec(retry_base_delay_ms=0), "86400000", "retry_base_delay_ms", "retry_base_delay_ms", "retry_base_delay_ms"),
    Rule("max delay high", Spec(retry_max_delay_ms=86_400_001), "86400000", "retry_max_delay_ms", "retry_max_delay_ms", "retry_max_delay_ms"),
    Rule("delays out of order", Spec(retry_base_delay_ms=500, retry_max_delay_ms=100), "at least the base delay", "retry_max_delay_ms", "retry_max_delay_ms", "retry_max_delay_ms"),
    Rule("kv details missing", Spec(kv=None), "needs its details", None, "kv", "kv_details"),
    Rule("details of another kind", Spec(dead_letter=("kv", None)), "Only Dead letter triggers have these details", NON_FIELD_ERRORS, "dead_letter", "dead_letter_details"),
    Rule("pattern invalid", Spec(kv=("ord*ers", ("insert",))), "prefix:*", "collection", "collection", "collection"),
    Rule("pattern empty", Spec(kv=("", ("insert",))), "must not be empty", "collection", "collection", "collection"),
    Rule("pattern too long", Spec(kv=("x" * 256, ("insert",))), "at most 255", "collection", "collection", "collection"),
    Rule("pattern with NUL", Spec(kv=("a\x00b", ("insert",))), "NUL", "collection", "collection", "collection"),
    Rule("ops empty", Spec(kv=("*", ())), "at least one op", "ops", "ops", "ops"),
    Rule("ops unknown", Spec(kv=("*", ("upsert",))), "Unknown op", "ops", "ops", None),
    Rule("ops repeated", Spec(kv=("*", ("insert", "insert"))), "listed once", "ops", "ops", "ops"),
    Rule("source kind unknown", replace(DL, dead_letter=("dead_letter", None)), "Unknown source kind", "source_kind", "source_kind", None),
    Rule("source of another app", replace(DL, dead_letter=(None, "their_trigger")), "belongs to another app", "source_trigger", "source_trigger_id", "source_trigger"),
    Rule("no such source", replace(DL, dead_letter=(None, MISSING)), "No trigger", None, "source_trigger_id", None),
    Rule("source is a dead-letter trigger", replace(DL, dead_letter=(None, "dead_letter_trigger")), "make no dead letters", "source_trigger", "source_trigger_id", None),
]  # fmt: skip


@pytest.fixture
def world():
    """App A with a script, a kv trigger named "taken" and a dead-letter
    trigger; app B with a script and a kv trigger."""
    app, other = AppFactory(slug="app-a"), AppFactory(slug="app-b")
    principal = UserFactory().principal
    script, their_script = ScriptFactory(app=app), ScriptFactory(app=other)
    repo = PgTriggerRepo()
    taken = kv_trigger(app, script, principal, name="taken")
    dead_letter = repo.create(NewTrigger(app.pk, "dead_letter", script.pk, "handler", principal.pk))
    theirs = kv_trigger(other, their_script, principal, name="theirs")
    rows = {
        "script": script,
        "their_script": their_script,
        "kv_trigger": Trigger.objects.get(pk=taken.id),
        "dead_letter_trigger": Trigger.objects.get(pk=dead_letter.id),
        "their_trigger": Trigger.objects.get(pk=theirs.id),
    }
    return app, principal, rows


def row(rows, ref):
    """The world's row `ref` names, or None for an id of no row."""
    return rows[ref] if isinstance(ref, str) else None


def row_id(rows, ref):
    return rows[ref].pk if isinstance(ref, str) else ref


def messages(error: ValidationError, field: str) -> list[str]:
    return error.message_dict.get(field, [])


def new_trigger(world, spec: Spec) -> NewTrigger:
    app, principal, rows = world
    kv = KvSpec(spec.kv[0], spec.kv[1]) if spec.kv else None
    dl = spec.dead_letter
    dead_letter = DeadLetterSpec(dl[0], dl[1] and row_id(rows, dl[1])) if dl else None
    return NewTrigger(
        app_id=app.pk,
        kind=spec.kind,
        script_id=row_id(rows, spec.script),
        name=spec.name,
        registered_by_principal=principal.pk,
        kv=kv,
        dead_letter=dead_letter,
        max_attempts=spec.max_attempts,
        retry_base_delay_ms=spec.retry_base_delay_ms,
        retry_max_delay_ms=spec.retry_max_delay_ms,
    )


def repository_says(world, spec: Spec, field: str) -> list[str]:
    with pytest.raises(ValidationError) as excinfo:
        PgTriggerRepo().create(new_trigger(world, spec))
    return messages(excinfo.value, field)


def full_clean_errors(world, spec: Spec) -> dict[str, list[str]]:
    """full_clean of the trigger, then of its details on a stored trigger of
    the spec's kind (a details row validates against the trigger it is of)."""
    app, principal, rows = world
    trigger = Trigger(
        app=app,
        kind=spec.kind,
        script=row(rows, spec.script),
        name=spec.name,
        registered_by_principal=principal,
        max_attempts=spec.max_attempts,
        retry_base_delay_ms=spec.retry_base_delay_ms,
        retry_max_delay_ms=spec.retry_max_delay_ms,
    )
    stored = rows["dead_letter_trigger" if spec.kind == "dead_letter" else "kv_trigger"]
    candidates = [trigger]
    if spec.kv:
        candidates.append(
            KvTriggerDetails(trigger=stored, collection=spec.kv[0], ops=list(spec.kv[1]))
        )
    if spec.dead_letter:
        source_kind, source = spec.dead_letter
        candidates.append(
            DeadLetterTriggerDetails(
                trigger=stored, source_kind=source_kind, source_trigger=row(rows, source)
            )
        )
    errors: dict[str, list[str]] = {}
    for candidate in candidates:
        try:
            # Unique checks off: the stored trigger has its details already.
            candidate.full_clean(validate_unique=candidate is trigger)
        except ValidationError as e:
            for name, said in e.message_dict.items():
                errors.setdefault(name, []).extend(said)
    return errors


def blank_if_none(value) -> str:
    return "" if value is None else str(value)


def admin_says(client, world, spec: Spec, field: str) -> list[str]:
    app, _, rows = world
    client.force_login(UserFactory(is_superuser=True))
    data = {
        **INLINES,
        "app": app.pk,
        "name": spec.name,
        "kind": spec.kind,
        "script": row_id(rows, spec.script),
        "enabled": "on",
        "max_attempts": blank_if_none(spec.max_attempts),
        "retry_base_delay_ms": blank_if_none(spec.retry_base_delay_ms),
        "retry_max_delay_ms": blank_if_none(spec.retry_max_delay_ms),
    }
    if spec.kv:
        data["kv_details-0-collection"], data["kv_details-0-ops"] = spec.kv[0], list(spec.kv[1])
    if spec.dead_letter:
        source_kind, source = spec.dead_letter
        data["dead_letter_details-0-source_kind"] = source_kind or ""
        data["dead_letter_details-0-source_trigger"] = row_id(rows, source) if source else ""
    response = client.post(reverse("admin:triggers_trigger_add"), data)
    assert response.status_code == 200, "admin should refuse it"
    said = list(response.context["adminform"].form.errors.get(field, []))
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        if field == formset.prefix:
            said += formset.non_form_errors()
        for form in formset.forms:
            said += form.errors.get(field, [])
    return said


@pytest.mark.parametrize("rule", RULES, ids=[r.id for r in RULES])
def test_every_path_refuses_a_broken_rule_with_the_same_message(client, world, rule):
    said = {"repository": repository_says(world, rule.spec, rule.repo)}
    if rule.model:
        said["full_clean"] = full_clean_errors(world, rule.spec).get(rule.model, [])
    if rule.admin:
        said["admin"] = admin_says(client, world, rule.spec, rule.admin)
    repository = said["repository"]
    assert len(repository) == 1 and rule.phrase in repository[0], said
    assert all(messages == repository for messages in said.values()), said
    assert not Trigger.objects.filter(name=rule.spec.name).exclude(name="taken").exists()


def test_a_valid_trigger_passes_every_path(client, world):
    """The table's base spec is valid: each row breaks only its own rule."""
    app, _, rows = world
    specs = [Spec(), DL, replace(DL, dead_letter=("kv", "kv_trigger"))]
    for n, spec in enumerate(specs):
        assert full_clean_errors(world, spec) == {}
        PgTriggerRepo().create(new_trigger(world, replace(spec, name=f"valid-{n}")))
    client.force_login(UserFactory(is_superuser=True))
    response = client.post(
        reverse("admin:triggers_trigger_add"),
        {
            **INLINES,
            "app": app.pk,
            "name": "fine",
            "kind": "kv",
            "script": rows["script"].pk,
            "kv_details-0-collection": "orders:*",
            "kv_details-0-ops": ["insert"],
        },
    )
    assert response.status_code == 302
