"""The ReplyInbox contract: exactly one of "the waiter got the reply" and
"deliver said nobody waits", in either order."""

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from outbox.storage.repository import Reply

OK = Reply(200, {"answer": 42})


@pytest.fixture
def inbox_id(reply_inbox, world):
    inbox_id = uuid.uuid4()
    reply_inbox.open(inbox_id, world.app_id)
    return inbox_id


def test_deliver_then_collect(reply_inbox, inbox_id):
    assert reply_inbox.collect(inbox_id) is None, "nothing delivered yet"
    assert reply_inbox.deliver(inbox_id, OK) is True
    assert reply_inbox.collect(inbox_id) == OK
    assert reply_inbox.collect(inbox_id) is None, "a reply is collected once"
    assert reply_inbox.close(inbox_id) is None, "the inbox is gone after collecting"


def test_waiter_leaves_first_then_delivery_is_refused(reply_inbox, inbox_id):
    assert reply_inbox.close(inbox_id) is None
    assert reply_inbox.deliver(inbox_id, OK) is False, "nobody waits: the caller must know"


def test_delivery_first_then_leaving_still_gets_the_reply(reply_inbox, inbox_id):
    assert reply_inbox.deliver(inbox_id, OK) is True
    assert reply_inbox.close(inbox_id) == OK


def test_second_delivery_is_refused(reply_inbox, inbox_id):
    assert reply_inbox.deliver(inbox_id, OK) is True
    assert reply_inbox.deliver(inbox_id, Reply(500, {"error": "x"})) is False
    assert reply_inbox.collect(inbox_id) == OK, "the first reply stands"


def test_unknown_inbox(reply_inbox, world):
    assert reply_inbox.deliver(uuid.uuid4(), OK) is False
    assert reply_inbox.close(uuid.uuid4()) is None


@pytest.mark.parametrize("body", [None, [1, "two"], "text", {"nested": {"x": [True, None]}}])
def test_any_json_body_round_trips(reply_inbox, inbox_id, body):
    assert reply_inbox.deliver(inbox_id, Reply(201, body))
    assert reply_inbox.collect(inbox_id) == Reply(201, body)


def test_gc_removes_only_old_inboxes(reply_inbox, world, inbox_id):
    assert reply_inbox.gc(timezone.now() - timedelta(hours=1), batch_size=10) == 0
    newer = uuid.uuid4()
    cutoff = timezone.now() + timedelta(seconds=1)
    assert reply_inbox.gc(cutoff, batch_size=1) == 1
    reply_inbox.open(newer, world.app_id)
    assert reply_inbox.deliver(inbox_id, OK) is False, "the old inbox was removed"
    assert reply_inbox.deliver(newer, OK) is True
    with pytest.raises(ValueError, match="batch_size"):
        reply_inbox.gc(cutoff, batch_size=0)
