"""Email triggers in the TriggerRepo contract: PostgreSQL and in-memory agree."""

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triggers.matching import collection_matches
from triggers.repository import EmailSpec, KvSpec


def test_an_email_trigger_round_trips(trigger_repo, new_trigger):
    created = trigger_repo.create(new_trigger("email", email=EmailSpec("orders")))
    assert created.email == EmailSpec("orders")
    assert trigger_repo.get(created.id) == created
    changed = trigger_repo.update(created.id, email=EmailSpec("support:*"))
    assert changed.email == EmailSpec("support:*")


@pytest.mark.parametrize(
    "pattern",
    ["", "Orders", "a*", ":*", "a:*b", "a+b", "a b", "a@b", "é", "x" * 65, "a\x00", 7],
)
def test_a_local_part_pattern_is_checked(trigger_repo, new_trigger, pattern):
    with pytest.raises(ValidationError) as e:
        trigger_repo.create(new_trigger("email", email=EmailSpec(pattern)))
    message = " ".join(e.value.message_dict["local_part"])
    assert "not a valid local part pattern" in message
    assert "lower-case" in message, "the message says what is allowed"


def test_an_email_trigger_needs_its_details(trigger_repo, new_trigger, world):
    with pytest.raises(ValidationError, match="the local part pattern it fires for"):
        trigger_repo.create(new_trigger("email"))
    with pytest.raises(ValidationError, match="Only Email triggers have these details"):
        trigger_repo.create(new_trigger("kv", kv=KvSpec("a"), email=EmailSpec("a")))
    assert trigger_repo.list_for_app(world.app_id) == []


def test_list_matching_email(trigger_repo, new_trigger, world):
    for name, pattern in [("all", "*"), ("eu", "orders:*"), ("exact", "orders")]:
        trigger_repo.create(new_trigger("email", name, email=EmailSpec(pattern)))
    off = trigger_repo.create(new_trigger("email", "off", email=EmailSpec("orders")))
    trigger_repo.update(off.id, enabled=False)
    names = lambda local: [t.name for t in trigger_repo.list_matching_email(world.app_id, local)]  # noqa: E731
    assert names("orders") == ["all", "exact"]
    assert names("orders:eu") == ["all", "eu"]
    assert names("sales") == ["all"]
    assert trigger_repo.list_matching_email(world.other_app_id, "orders") == []


LOCAL = st.text(alphabet="ab:_%*.", min_size=1, max_size=6)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pattern=LOCAL, local=LOCAL.filter(lambda t: "*" not in t))
def test_sql_and_python_agree_on_every_local_part(trigger_repo, new_trigger, world, pattern, local):
    for t in trigger_repo.list_for_app(world.app_id):
        trigger_repo.delete(t.id)
    try:
        trigger_repo.create(new_trigger("email", email=EmailSpec(pattern)))
    except ValidationError:
        return
    matched = bool(trigger_repo.list_matching_email(world.app_id, local))
    assert matched == collection_matches(pattern, local)
