"""`make run`'s demo data: usable credentials and dead letters on their own."""

import pytest

from outbox.models import OutboxEntry
from picloud.demo import DEMO_ORDERS, load_demo
from picloud.domain import tokens
from picloud.models import ApiToken, App
from triggers.models import Trigger

pytestmark = pytest.mark.django_db


def test_demo_data_is_repeatable_and_feeds_a_failing_trigger():
    first = load_demo(password="pw-1")
    second = load_demo(password="pw-2")
    assert App.objects.filter(slug="demo").count() == 1
    assert Trigger.objects.filter(app__slug="demo").count() == 2, "triggers are not duplicated"
    assert tokens.authenticate(first.api_token) is None, "the last run's token is replaced"
    grant = tokens.authenticate(second.api_token)
    assert grant is not None and "script:invoke" in grant.scopes
    assert ApiToken.objects.filter(name="make run demo").count() == 1
    flaky = Trigger.objects.get(app__slug="demo", name="orders-audit")
    assert flaky.script.handler == "picloud.fail" and flaky.max_attempts == 2
    rows = OutboxEntry.objects.filter(trigger=flaky)
    assert rows.count() == 2 * DEMO_ORDERS, "each run writes orders the failing trigger picks up"
