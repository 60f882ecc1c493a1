"""Pub/sub and queue triggers in the TriggerRepo contract: PostgreSQL and
in-memory agree."""

import uuid

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triggers.matching import collection_matches
from triggers.repository import KvSpec, PubsubSpec, QueueSpec


def test_a_pubsub_trigger_round_trips(trigger_repo, new_trigger):
    created = trigger_repo.create(new_trigger("pubsub", pubsub=PubsubSpec("orders:*")))
    assert created.pubsub == PubsubSpec("orders:*")
    assert trigger_repo.get(created.id) == created
    changed = trigger_repo.update(created.id, pubsub=PubsubSpec("audit"))
    assert changed.pubsub == PubsubSpec("audit")


@pytest.mark.parametrize("pattern", ["", "a*", "*:*", ":*", "a:*b", "x" * 256, "a\x00"])
def test_a_pubsub_pattern_is_checked_like_a_collection_pattern(trigger_repo, new_trigger, pattern):
    with pytest.raises(ValidationError) as e:
        trigger_repo.create(new_trigger("pubsub", pubsub=PubsubSpec(pattern)))
    assert "topic" in e.value.message_dict
    assert "Topic pattern" in " ".join(e.value.message_dict["topic"]) or "topic" in str(e.value)


def test_pubsub_and_queue_triggers_need_their_details(trigger_repo, new_trigger, world):
    with pytest.raises(ValidationError, match="topic pattern it subscribes to"):
        trigger_repo.create(new_trigger("pubsub"))
    with pytest.raises(ValidationError, match="at least the queue it consumes"):
        trigger_repo.create(new_trigger("queue"))
    with pytest.raises(ValidationError, match="Only Pub/sub triggers have these details"):
        trigger_repo.create(new_trigger("kv", kv=KvSpec("a"), pubsub=PubsubSpec("a")))
    assert trigger_repo.list_for_app(world.app_id) == []


def test_list_matching_pubsub(trigger_repo, new_trigger, world):
    for name, pattern in [("all", "*"), ("orders", "orders:*"), ("exact", "orders:new")]:
        trigger_repo.create(new_trigger("pubsub", name, pubsub=PubsubSpec(pattern)))
    off = trigger_repo.create(new_trigger("pubsub", "off", pubsub=PubsubSpec("*")))
    trigger_repo.update(off.id, enabled=False)
    names = lambda topic: [t.name for t in trigger_repo.list_matching_pubsub(world.app_id, topic)]  # noqa: E731
    assert names("orders:new") == ["all", "exact", "orders"]
    assert names("orders:old") == ["all", "orders"]
    assert names("ordersX") == ["all"]
    assert trigger_repo.list_matching_pubsub(world.other_app_id, "orders:new") == []


TOPIC = st.text(alphabet="ab:_%*", min_size=1, max_size=6)


# The repository is reset inside the test (trigger_repo_reset): each input starts empty.
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pattern=TOPIC, topic=TOPIC.filter(lambda t: "*" not in t))
def test_sql_and_python_agree_on_every_topic(trigger_repo, new_trigger, world, pattern, topic):
    trigger_repo_reset(trigger_repo, world)
    try:
        trigger_repo.create(new_trigger("pubsub", pubsub=PubsubSpec(pattern)))
    except ValidationError:
        return
    matched = bool(trigger_repo.list_matching_pubsub(world.app_id, topic))
    assert matched == collection_matches(pattern, topic)


def trigger_repo_reset(repo, world):
    for t in repo.list_for_app(world.app_id):
        repo.delete(t.id)


def test_a_queue_trigger_round_trips_with_its_defaults(trigger_repo, new_trigger, world):
    created = trigger_repo.create(new_trigger("queue", queue=QueueSpec(world.queue_id)))
    assert created.queue == QueueSpec(
        world.queue_id, batch_size=10, max_batch_wait_ms=0, max_concurrency=5, max_receives=5
    )
    assert trigger_repo.get(created.id) == created
    spec = QueueSpec(world.queue_id, 100, 60_000, 100, 100)
    assert trigger_repo.update(created.id, queue=spec).queue == spec


@pytest.mark.parametrize(
    "field,value",
    [
        ("batch_size", 0),
        ("batch_size", 101),
        ("max_batch_wait_ms", -1),
        ("max_batch_wait_ms", 60_001),
        ("max_concurrency", 0),
        ("max_receives", 101),
        ("max_receives", True),
        ("batch_size", "10"),
    ],
)
def test_queue_settings_are_range_checked(trigger_repo, new_trigger, world, field, value):
    with pytest.raises(ValidationError) as e:
        trigger_repo.create(new_trigger("queue", queue=QueueSpec(world.queue_id, **{field: value})))
    assert field in e.value.message_dict
    assert "Allowed:" in e.value.message_dict[field][0]


def test_a_queue_trigger_consumes_a_queue_of_its_own_app_only(trigger_repo, new_trigger, world):
    for queue_id in (world.other_queue_id, uuid.uuid4()):
        with pytest.raises(ValidationError) as e:
            trigger_repo.create(new_trigger("queue", queue=QueueSpec(queue_id)))
        assert "consumes only a queue of its own app" in e.value.message_dict["queue_id"][0]
    assert trigger_repo.list_for_app(world.app_id) == []


def test_a_queue_has_one_consumer_trigger(trigger_repo, new_trigger, world):
    first = trigger_repo.create(new_trigger("queue", "a", queue=QueueSpec(world.queue_id)))
    with pytest.raises(ValidationError, match="is consumed by trigger 'a' already"):
        trigger_repo.create(new_trigger("queue", "b", queue=QueueSpec(world.queue_id)))
    # Changing the one consumer's own settings is no conflict.
    trigger_repo.update(first.id, queue=QueueSpec(world.queue_id, batch_size=3))


def test_a_queue_trigger_takes_no_max_attempts(trigger_repo, new_trigger, world):
    with pytest.raises(ValidationError, match="max_receives; leave max attempts empty"):
        trigger_repo.create(new_trigger("queue", queue=QueueSpec(world.queue_id), max_attempts=3))
