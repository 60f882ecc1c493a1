"""Cron triggers in the TriggerRepo contract: PostgreSQL and in-memory agree."""

import pytest
from django.core.exceptions import ValidationError

from triggers.repository import CronSpec, KvSpec, NewTrigger


@pytest.fixture
def new_cron(world):
    def make(name="nightly", **spec):
        return NewTrigger(
            app_id=world.app_id,
            kind="cron",
            script_id=world.script_id,
            name=name,
            registered_by_principal=world.principal_id,
            cron=CronSpec(**{"schedule": "0 3 * * *", **spec}),
        )

    return make


def test_a_cron_trigger_round_trips_with_its_defaults(trigger_repo, new_cron):
    created = trigger_repo.create(new_cron())
    assert created.kind == "cron"
    assert created.cron == CronSpec(
        schedule="0 3 * * *",
        timezone="UTC",
        catchup="latest",
        catchup_window_s=21_600,
        overlap="skip",
        paused=False,
        payload={},
    )
    assert trigger_repo.get(created.id) == created


def test_every_field_is_kept(trigger_repo, new_cron):
    spec = dict(
        schedule="*/10 * * * * *",
        timezone="Europe/Paris",
        catchup="all",
        catchup_window_s=600,
        overlap="buffer_one",
        paused=True,
        payload={"report": "daily", "n": [1, 2]},
    )
    created = trigger_repo.create(new_cron(**spec))
    assert created.cron == CronSpec(**spec)


def test_details_are_updated(trigger_repo, new_cron):
    t = trigger_repo.create(new_cron())
    changed = trigger_repo.update(t.id, cron=CronSpec("@hourly", timezone="Asia/Tokyo"))
    assert changed.cron == CronSpec("@hourly", timezone="Asia/Tokyo")
    assert trigger_repo.get(t.id).cron == changed.cron


def test_a_cron_trigger_needs_its_details(trigger_repo, world):
    with pytest.raises(ValidationError) as caught:
        trigger_repo.create(
            NewTrigger(world.app_id, "cron", world.script_id, "c", world.principal_id)
        )
    assert "needs its details" in str(caught.value.message_dict["cron"])


def test_only_cron_triggers_have_cron_details(trigger_repo, world):
    with pytest.raises(ValidationError) as caught:
        trigger_repo.create(
            NewTrigger(
                world.app_id,
                "kv",
                world.script_id,
                "k",
                world.principal_id,
                kv=KvSpec("*"),
                cron=CronSpec("* * * * *"),
            )
        )
    assert "Only Cron triggers" in str(caught.value.message_dict["cron"])


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        ({"schedule": "61 * * * *"}, "schedule", "out of range"),
        ({"schedule": "* * * *"}, "schedule", "has 4 fields"),
        ({"timezone": "Mars/Base"}, "timezone", "unknown timezone"),
        ({"catchup": "some"}, "catchup", "allowed: skip, latest, all"),
        ({"overlap": "queue"}, "overlap", "allowed: skip, buffer_one, allow"),
        ({"catchup_window_s": -1}, "catchup_window_s", "0 to 604800"),
        ({"catchup_window_s": 604_801}, "catchup_window_s", "0 to 604800"),
        ({"payload": [1]}, "payload", "JSON object"),
        ({"payload": {"x": float("nan")}}, "payload", "plain JSON"),
        ({"payload": {"x": "a\x00b"}}, "payload", "plain JSON"),
        ({"payload": {"x": "y" * 70_000}}, "payload", "At most 65536 bytes"),
    ],
)
def test_bad_details_are_refused_by_field(trigger_repo, new_cron, spec, field, says):
    with pytest.raises(ValidationError) as caught:
        trigger_repo.create(new_cron(**spec))
    assert says in " ".join(caught.value.message_dict[field])
    assert trigger_repo.list_for_app(new_cron().app_id) == []


def test_a_bad_update_leaves_the_trigger_as_it_was(trigger_repo, new_cron):
    t = trigger_repo.create(new_cron())
    with pytest.raises(ValidationError):
        trigger_repo.update(t.id, cron=CronSpec("nope"))
    assert trigger_repo.get(t.id).cron == t.cron
