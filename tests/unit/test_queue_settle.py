"""What a queue batch's outcome means for each message (no database)."""

import uuid

import pytest

from outbox.dispatch.queue_settle import plan, reported_failures
from picloud.runtime.execution import Failure, Success
from triggers.queue_batches import Retry
from triggers.repository import QueueSpec

SPEC = QueueSpec(uuid.uuid4(), max_receives=3)
MESSAGES = [{"id": i, "body": i, "receive_count": 1} for i in (10, 11, 12)]


def decide(outcome, *, extra=0, messages=MESSAGES):
    return plan(messages, outcome, extra_receives=extra, spec=SPEC, delay_for=lambda n: n / 10)


@pytest.mark.parametrize(
    "result", [None, {}, {"failed": None}, {"failed": []}, "done", [1, 2], {"other": 1}]
)
def test_a_result_without_failures_consumes_the_whole_batch(result):
    got = decide(Success(result))
    assert (got.done, got.retry, got.dead) == ([10, 11, 12], [], [])


def test_only_the_reported_messages_are_retried():
    got = decide(Success({"failed": [11, "12"]}))
    assert got.done == [10]
    assert got.retry == [Retry(11, 100, 1), Retry(12, 100, 1)]


@pytest.mark.parametrize(
    "failed,why",
    [
        ("11", "must be a list of message ids, got str"),
        ([11, 99], "message 99 is not in this batch"),
        ([True], "is not a message id"),
        (["x"], "is not a message id"),
        ([1.5], "is not a message id"),
    ],
)
def test_a_malformed_report_dead_letters_the_batch_at_once(failed, why):
    assert why in reported_failures({"failed": failed}, {10, 11, 12})
    got = decide(Success({"failed": failed}))
    assert got.done == [] and got.retry == []
    assert [m["id"] for m, _, _ in got.dead] == [10, 11, 12]
    assert all(why in error for _, _, error in got.dead)


def test_an_exception_retries_the_whole_batch_until_max_receives():
    failure = Failure("RuntimeError: boom", retryable=True)
    messages = [{"id": 1, "receive_count": 1}, {"id": 2, "receive_count": 3}]
    got = decide(failure, messages=messages)
    assert got.retry == [Retry(1, 100, 1)]
    [(message, receives, error)] = got.dead
    assert message["id"] == 2 and receives == 3
    assert error == "RuntimeError: boom (receive 3 of max_receives=3)"


def test_a_lost_workers_delivery_counts_as_a_receive():
    got = decide(Failure("timeout", retryable=True), extra=1)
    assert got.retry == [Retry(i, 200, 2) for i in (10, 11, 12)]
    assert [receives for _, receives, _ in decide(Failure("x", retryable=True), extra=2).dead] == [
        3,
        3,
        3,
    ]


def test_a_failure_retrying_cannot_fix_dead_letters_every_message_at_once():
    got = decide(Failure("unauthorized: gone", retryable=False, status=403, unauthorized=True))
    assert got.done == [] and got.retry == []
    assert [(m["id"], error) for m, _, error in got.dead] == [
        (10, "unauthorized: gone"),
        (11, "unauthorized: gone"),
        (12, "unauthorized: gone"),
    ]
