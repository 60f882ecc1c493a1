import threading
import time

import pytest

from picloud.runtime.sandbox import SandboxTimeout, hung_helpers, run_each, run_with_timeout
from tests.helpers import wait_for


def test_results_and_exceptions_come_back_in_order():
    def boom():
        raise ValueError("x")

    results = list(run_each([lambda: 1, boom, lambda: 3], timeout=5))
    assert results[0] == (True, 1) and results[2] == (True, 3)
    assert results[1][0] is False and isinstance(results[1][1], ValueError)


def test_a_timeout_stops_the_batch_and_runs_none_of_the_rest():
    ran = []
    release = threading.Event()

    def slow():
        release.wait(5)

    it = run_each([lambda: ran.append(1), slow, lambda: ran.append(3)], timeout=0.2)
    assert next(it) == (True, None)
    started = time.monotonic()
    with pytest.raises(SandboxTimeout):
        next(it)
    assert time.monotonic() - started < 1.0
    release.set()
    # The abandoned helper ends once its callable returns; had it gone on to
    # the third callable, that would have run by then.
    wait_for(lambda: hung_helpers() == 0, timeout=10, what="the abandoned helper to end")
    assert ran == [1], "nothing after the overrunning callable may run"
    assert run_with_timeout(lambda: "fresh helper", 1) == "fresh helper"


def test_cancel_runs_no_further_callable_but_yields_those_that_ran():
    ran = []
    started, gate = threading.Event(), threading.Event()

    def first():
        ran.append(1)
        started.set()
        gate.wait(5)

    run = run_each([first, lambda: ran.append(2), lambda: ran.append(3)], timeout=5)
    assert started.wait(5)
    run.cancel()  # while the first is still running
    gate.set()
    assert list(run) == [(True, None)], "the first ran, so its result comes back"
    assert ran == [1]
    assert run_with_timeout(lambda: 42, 1) == 42, "the helper serves later calls"


def test_close_abandons_the_helper_and_later_calls_get_clean_results():
    gate = threading.Event()
    run = run_each([lambda: gate.wait(5)], timeout=5)
    run.close()
    gate.set()
    assert run_with_timeout(lambda: 42, 1) == 42


def test_hung_handlers_are_capped_and_the_cap_lifts_when_they_end():
    """Each timed-out handler keeps its thread (and database connection) until
    it returns; past MAX_HUNG_HELPERS nothing new starts (the dispatcher then
    claims nothing: tests/unit/test_dispatcher_faults.py)."""
    import threading
    import uuid

    from picloud.config import SandboxCeiling, WebhookConfig
    from picloud.runtime import sandbox
    from picloud.runtime.execution import RowExecutor
    from tests.helpers import wait_for

    # Handlers abandoned by earlier tests end within seconds: start from none.
    wait_for(lambda: sandbox.hung_helpers() == 0, timeout=10, what="earlier hung handlers")
    release = threading.Event()
    for _ in range(sandbox.MAX_HUNG_HELPERS):
        with pytest.raises(sandbox.SandboxTimeout):
            sandbox.run_with_timeout(lambda: release.wait(30), timeout=0.01)
    assert sandbox.hung_helpers() == sandbox.MAX_HUNG_HELPERS
    started = []
    with pytest.raises(sandbox.SandboxFull, match="still run past their timeout"):
        sandbox.run_each([lambda: started.append(1)], timeout=1)

    executor = RowExecutor(
        SandboxCeiling(timeout_ms=1000),
        WebhookConfig(),
        run_row=lambda row, **_: started.append(row),
    )
    assert executor.saturated(), "the dispatcher asks before it claims"
    rows = [type("Row", (), {"id": uuid.uuid4()})() for _ in range(3)]
    with pytest.raises(sandbox.SandboxFull):
        executor.run_batch(rows)
    assert started == [], "nothing starts while the cap is reached"

    release.set()
    wait_for(lambda: sandbox.hung_helpers() == 0, timeout=10, what="the hung handlers to end")
    assert sandbox.run_with_timeout(lambda: "runs again", timeout=1) == "runs again"
