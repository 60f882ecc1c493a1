"""TriggerRepo contract: PostgreSQL and in-memory behave the same."""

import uuid

import pytest
from django.core.exceptions import ValidationError

from triggers.repository import (
    DeadLetterSpec,
    KvSpec,
    NewTrigger,
    TriggerInUse,
    TriggerNotFound,
)
from triggers.rules import DuplicateTriggerName, ForeignScript, ForeignSourceTrigger


@pytest.fixture
def new_kv(world):
    def make(name="t", collection="orders:*", ops=("insert", "update"), **kw):
        return NewTrigger(
            app_id=kw.pop("app_id", world.app_id),
            kind="kv",
            script_id=kw.pop("script_id", world.script_id),
            name=name,
            registered_by_principal=world.principal_id,
            kv=KvSpec(collection, tuple(ops)),
            **kw,
        )

    return make


@pytest.fixture
def new_dl(world):
    def make(name="dl", source_kind=None, source_trigger_id=None, **kw):
        return NewTrigger(
            app_id=world.app_id,
            kind="dead_letter",
            script_id=world.script_id,
            name=name,
            registered_by_principal=world.principal_id,
            dead_letter=DeadLetterSpec(source_kind, source_trigger_id),
            **kw,
        )

    return make


def test_create_then_get_round_trips(trigger_repo, new_kv, world):
    created = trigger_repo.create(new_kv(max_attempts=3))
    assert created.app_id == world.app_id
    assert created.kv == KvSpec("orders:*", ("insert", "update"))
    assert created.enabled and created.max_attempts == 3
    assert created.registered_by_principal == world.principal_id
    assert trigger_repo.get(created.id) == created
    assert trigger_repo.get(uuid.uuid4()) is None


def test_dead_letter_trigger_without_filters_means_any(trigger_repo, world):
    t = trigger_repo.create(
        NewTrigger(world.app_id, "dead_letter", world.script_id, "dl", world.principal_id)
    )
    assert t.dead_letter == DeadLetterSpec(None, None)


@pytest.mark.parametrize(
    ("collection", "ops"),
    [
        ("*x", ("insert",)),
        ("a*:*", ("insert",)),
        (":*", ("insert",)),
        ("", ("insert",)),
        ("ok", ()),
        ("ok", ("upsert",)),
        ("ok", ("insert", "insert")),
    ],
)
def test_invalid_kv_details_are_refused(trigger_repo, new_kv, collection, ops):
    with pytest.raises(ValidationError) as excinfo:
        trigger_repo.create(new_kv(collection=collection, ops=ops))
    assert "allowed" in str(excinfo.value), "the error must say what is allowed"


def test_kind_and_details_must_agree(trigger_repo, world):
    with pytest.raises(ValidationError, match="Unknown kind 'webhook'"):
        trigger_repo.create(
            NewTrigger(world.app_id, "webhook", world.script_id, "x", world.principal_id)
        )
    with pytest.raises(ValidationError, match="needs its details: a collection pattern"):
        trigger_repo.create(
            NewTrigger(world.app_id, "kv", world.script_id, "x", world.principal_id)
        )
    with pytest.raises(ValidationError, match="Only KV write triggers"):
        trigger_repo.create(
            NewTrigger(
                world.app_id,
                "dead_letter",
                world.script_id,
                "x",
                world.principal_id,
                kv=KvSpec("a"),
            )
        )
    assert trigger_repo.list_for_app(world.app_id) == []


def test_retry_overrides_are_range_checked(trigger_repo, new_kv):
    with pytest.raises(ValidationError, match="max_attempts"):
        trigger_repo.create(new_kv(max_attempts=0))
    with pytest.raises(ValidationError, match="at least"):
        trigger_repo.create(new_kv(retry_base_delay_ms=500, retry_max_delay_ms=100))


def test_names_are_unique_per_app(trigger_repo, new_kv, world):
    trigger_repo.create(new_kv(name="same"))
    with pytest.raises(DuplicateTriggerName):
        trigger_repo.create(new_kv(name="same"))
    other = trigger_repo.create(
        new_kv(name="same", app_id=world.other_app_id, script_id=world.other_script_id)
    )
    assert other.app_id == world.other_app_id


def test_update_changes_fields_and_details(trigger_repo, new_kv):
    t = trigger_repo.create(new_kv())
    updated = trigger_repo.update(t.id, enabled=False, kv=KvSpec("exact", ("delete",)), name="n2")
    assert (updated.enabled, updated.kv, updated.name) == (
        False,
        KvSpec("exact", ("delete",)),
        "n2",
    )
    assert trigger_repo.get(t.id) == updated


def test_update_validates_and_refuses_unknown_fields(trigger_repo, new_kv):
    t = trigger_repo.create(new_kv())
    with pytest.raises(ValidationError):
        trigger_repo.update(t.id, kv=KvSpec("bad*"))
    with pytest.raises(TypeError, match="cannot update kind"):
        trigger_repo.update(t.id, kind="cron")
    with pytest.raises(TriggerNotFound):
        trigger_repo.update(uuid.uuid4(), enabled=False)
    other = trigger_repo.create(new_kv(name="other"))
    with pytest.raises(DuplicateTriggerName):
        trigger_repo.update(other.id, name=t.name)
    assert trigger_repo.get(t.id) == t, "a refused update changes nothing"


def test_delete(trigger_repo, new_kv):
    t = trigger_repo.create(new_kv())
    assert trigger_repo.delete(t.id) is True
    assert trigger_repo.get(t.id) is None
    assert trigger_repo.delete(t.id) is False


def test_list_for_app_sorts_by_name_and_filters_kind(trigger_repo, new_kv, new_dl, world):
    for name in ["b", "B", "a", "é"]:
        trigger_repo.create(new_kv(name=name))
    trigger_repo.create(new_dl(name="dl"))
    trigger_repo.create(
        new_kv(name="x", app_id=world.other_app_id, script_id=world.other_script_id)
    )
    assert [t.name for t in trigger_repo.list_for_app(world.app_id)] == ["B", "a", "b", "dl", "é"]
    assert [t.name for t in trigger_repo.list_for_app(world.app_id, kind="dead_letter")] == ["dl"]


def test_list_matching_kv(trigger_repo, new_kv, world):
    trigger_repo.create(new_kv(name="all", collection="*", ops=("insert", "update", "delete")))
    trigger_repo.create(new_kv(name="prefix", collection="orders:*", ops=("insert",)))
    trigger_repo.create(new_kv(name="exact", collection="orders:eu", ops=("update",)))
    trigger_repo.create(new_kv(name="off", collection="*", ops=("insert",), enabled=False))
    trigger_repo.create(
        new_kv(
            name="elsewhere",
            collection="*",
            app_id=world.other_app_id,
            script_id=world.other_script_id,
        )
    )

    def names(collection, op):
        return [t.name for t in trigger_repo.list_matching_kv(world.app_id, collection, op)]

    assert names("orders:eu", "insert") == ["all", "prefix"]
    assert names("orders:eu", "update") == ["all", "exact"]
    assert names("orders:", "insert") == ["all", "prefix"]
    assert names("orders", "insert") == ["all"]
    assert names("ordersX:1", "insert") == ["all"]
    assert names("users", "delete") == ["all"]


def test_kv_matching_treats_like_wildcards_as_plain_characters(trigger_repo, new_kv, world):
    trigger_repo.create(new_kv(name="pct", collection="a%:*", ops=("insert",)))
    trigger_repo.create(new_kv(name="under", collection="a_b", ops=("insert",)))
    assert trigger_repo.list_matching_kv(world.app_id, "abc:1", "insert") == []
    assert trigger_repo.list_matching_kv(world.app_id, "axb", "insert") == []
    assert [t.name for t in trigger_repo.list_matching_kv(world.app_id, "a%:1", "insert")] == [
        "pct"
    ]
    assert [t.name for t in trigger_repo.list_matching_kv(world.app_id, "a_b", "insert")] == [
        "under"
    ]


def test_list_matching_dead_letter_applies_filters(trigger_repo, new_kv, new_dl, world):
    source = trigger_repo.create(new_kv(name="source"))
    trigger_repo.create(new_dl(name="any"))
    trigger_repo.create(new_dl(name="kv-only", source_kind="kv"))
    trigger_repo.create(new_dl(name="invoke-only", source_kind="invoke"))
    trigger_repo.create(new_dl(name="from-source", source_trigger_id=source.id))
    trigger_repo.create(new_dl(name="disabled", enabled=False))

    class Letter:
        def __init__(self, source_kind, trigger_id):
            self.source_kind, self.trigger_id = source_kind, trigger_id

    def names(letter):
        return [t.name for t in trigger_repo.list_matching_dead_letter(world.app_id, letter)]

    assert names(Letter("kv", source.id)) == ["any", "from-source", "kv-only"]
    assert names(Letter("kv", uuid.uuid4())) == ["any", "kv-only"]
    assert names(Letter("invoke", None)) == ["any", "invoke-only"]
    assert trigger_repo.list_matching_dead_letter(world.other_app_id, Letter("kv", None)) == []


def test_unknown_dead_letter_source_kind_is_refused(trigger_repo, new_dl):
    with pytest.raises(ValidationError, match="allowed: kv, cron"):
        trigger_repo.create(new_dl(source_kind="dead_letter"))


def test_a_dead_letter_filter_names_only_a_trigger_of_its_own_app(
    trigger_repo, new_kv, new_dl, world
):
    foreign = trigger_repo.create(
        new_kv(name="theirs", app_id=world.other_app_id, script_id=world.other_script_id)
    )
    for source_id in (foreign.id, uuid.uuid4()):
        with pytest.raises(ForeignSourceTrigger, match="filters only on a trigger of its own app"):
            trigger_repo.create(new_dl(source_trigger_id=source_id))
    assert trigger_repo.list_for_app(world.app_id) == []
    handler = trigger_repo.create(new_dl())
    with pytest.raises(ForeignSourceTrigger):
        trigger_repo.update(handler.id, dead_letter=DeadLetterSpec(None, foreign.id))
    assert trigger_repo.get(handler.id) == handler, "a refused update changes nothing"
    own = trigger_repo.create(new_kv(name="ours"))
    updated = trigger_repo.update(handler.id, dead_letter=DeadLetterSpec(None, own.id))
    assert updated.dead_letter == DeadLetterSpec(None, own.id)


def test_a_dead_letter_filter_never_names_a_dead_letter_trigger(trigger_repo, new_dl):
    """Their failures make no dead letters: such a filter would never match."""
    other = trigger_repo.create(new_dl(name="other"))
    with pytest.raises(ValidationError, match="is a dead-letter trigger"):
        trigger_repo.create(new_dl(name="alert", source_trigger_id=other.id))
    with pytest.raises(ValidationError, match="is a dead-letter trigger"):
        trigger_repo.update(other.id, dead_letter=DeadLetterSpec(None, other.id))
    assert [t.name for t in trigger_repo.list_for_app(other.app_id)] == ["other"]


def test_a_trigger_named_by_a_filter_is_deleted_only_after_it(trigger_repo, new_kv, new_dl):
    source = trigger_repo.create(new_kv(name="source"))
    handler = trigger_repo.create(new_dl(name="alert", source_trigger_id=source.id))
    with pytest.raises(TriggerInUse, match="'alert' filter on this trigger"):
        trigger_repo.delete(source.id)
    assert trigger_repo.get(source.id) is not None
    assert trigger_repo.delete(handler.id) is True
    assert trigger_repo.delete(source.id) is True


def test_a_trigger_runs_only_a_script_of_its_own_app(trigger_repo, new_kv, world):
    for script_id in (world.other_script_id, uuid.uuid4()):
        with pytest.raises(ForeignScript, match="runs only a script of its own app"):
            trigger_repo.create(new_kv(script_id=script_id))
    assert trigger_repo.list_for_app(world.app_id) == []
    t = trigger_repo.create(new_kv())
    with pytest.raises(ForeignScript):
        trigger_repo.update(t.id, script_id=world.other_script_id)
    assert trigger_repo.get(t.id) == t, "a refused update changes nothing"
