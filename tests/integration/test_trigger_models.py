"""Model-level validation (full_clean, and so admin forms) matches the repository's."""

import pytest
from django.core.exceptions import ValidationError

from tests.factories import ScriptFactory, UserFactory
from triggers.models import KvTriggerDetails, Trigger

pytestmark = pytest.mark.django_db


@pytest.fixture
def trigger(app):
    return Trigger.objects.create(
        app=app,
        kind="kv",
        script=ScriptFactory(app=app),
        name="t",
        registered_by_principal=UserFactory().principal,
    )


def test_full_clean_rejects_an_invalid_pattern_with_what_is_allowed(trigger):
    details = KvTriggerDetails(trigger=trigger, collection="orders*", ops=["insert"])
    with pytest.raises(ValidationError) as excinfo:
        details.full_clean()
    assert "collection" in excinfo.value.message_dict
    assert "allowed" in excinfo.value.message_dict["collection"][0]


def test_full_clean_rejects_empty_or_unknown_ops(trigger):
    for ops in ([], ["upsert"]):
        with pytest.raises(ValidationError) as excinfo:
            KvTriggerDetails(trigger=trigger, collection="*", ops=ops).full_clean()
        assert "ops" in excinfo.value.message_dict


def test_full_clean_accepts_a_valid_trigger(trigger):
    KvTriggerDetails(trigger=trigger, collection="orders:*", ops=["insert", "update"]).full_clean()
    trigger.full_clean()


def test_script_must_belong_to_the_trigger_app(trigger):
    trigger.script = ScriptFactory()
    with pytest.raises(ValidationError) as excinfo:
        trigger.full_clean()
    assert "script" in excinfo.value.message_dict


def test_retry_overrides_are_range_checked(trigger):
    trigger.retry_base_delay_ms, trigger.retry_max_delay_ms = 500, 100
    with pytest.raises(ValidationError, match="at least the base delay"):
        trigger.full_clean()
