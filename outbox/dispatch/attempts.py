"""What the delivery log says of one attempt, from the row, its outcome,
when it started and what the dispatcher did with it: ``Acked`` for a row
the claim acknowledges (the statement reads the rest from the row), an
``Attempt`` for any other."""

from __future__ import annotations

import json
import time
from typing import Any, NamedTuple

from outbox.storage.delivery_log import (
    DETAIL_CHARS,
    Acked,
    Attempt,
    attempt_of_row,
    storable_detail,
)
from outbox.storage.repository import OutboxRow
from picloud.runtime.execution import Failure, Outcome


class Ran(NamedTuple):
    """A row that ran: its outcome, when its lease ends (monotonic clock),
    and when it started (epoch seconds; None: not measured) and for how long."""

    row: OutboxRow
    outcome: Outcome
    lease_ends_at: float
    started: float | None = None
    seconds: float = 0.0


def outcome_name(outcome: Outcome) -> str:
    if outcome.ok:
        return "success"
    assert isinstance(outcome, Failure)
    if outcome.unauthorized:
        return "unauthorized"
    if outcome.timed_out:
        return "timeout"
    if outcome.lost:
        return "lost"
    return "error"


def acked_of(ran: Ran) -> Acked:
    """What the statement acknowledging the row logs of its attempt."""
    status, detail = _status_and_detail(ran.outcome)
    started = ran.started if ran.started is not None else time.time()
    return Acked(
        started, max(0, round(ran.seconds * 1000)), outcome_name(ran.outcome), status, detail
    )


def attempt_of(ran: Ran, disposition: str) -> Attempt:
    """The whole log entry of an attempt whose row is not acknowledged."""
    return attempt_of_row(ran.row, acked_of(ran), disposition)


def _status_and_detail(outcome: Outcome) -> tuple[int | None, str]:
    """The HTTP status (fit for a smallint) and the start of the answer or error."""
    if outcome.ok:
        status, detail = getattr(outcome, "status", None), _answer(outcome.result)
    else:
        assert isinstance(outcome, Failure)
        status, detail = outcome.status, storable_detail(outcome.error)
    if status is not None and not 0 <= status <= 32_767:
        status = None
    return status, detail


def _answer(result: Any) -> str:
    """The start of a handler's result or an endpoint's answer, as text."""
    if result is None:
        return ""
    if isinstance(result, str):
        return storable_detail(result)
    # Encoded piece by piece, up to what is kept: a 1 MB result must not
    # cost a 1 MB encoding on the dispatcher's database thread.
    pieces, size = [], 0
    try:
        for piece in _ENCODER.iterencode(result):
            pieces.append(piece)
            size += len(piece)
            if size > DETAIL_CHARS:
                break
    except (TypeError, ValueError):
        return storable_detail(repr(result)[: DETAIL_CHARS + 1])
    return storable_detail("".join(pieces))


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)
