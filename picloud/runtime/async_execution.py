"""Run a prepared outbox row on the event loop and return its Outcome.

The engine (outbox/dispatch/engine.py) keeps many rows in flight on one
event loop: a webhook is awaited on the async HTTP client, an ``async def``
handler runs on the loop itself, and a plain handler runs on the
HandlerThreads so it cannot block the loop. Each is stopped (cancelled, or
abandoned for a thread) at the sandbox timeout. The checks before a run and
the mapping of results and errors to outcomes are execution.py's, shared
with the synchronous path, so the two cannot disagree.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

from picloud.config import SandboxCeiling
from picloud.runtime.execution import (
    Failure,
    Outcome,
    Prepared,
    context_for,
    handler_failure,
    handler_of,
    handler_result,
    posts_webhook,
    timed_out,
    webhook_failure,
    webhook_outcome,
    webhook_request,
)
from picloud.runtime.handler_threads import (
    HandlerThreads,
    NotStarted,
    StillRunning,
)
from picloud.runtime.sandbox import SandboxTimeout
from picloud.runtime.webhooks import WebhookResponse

# post(url, body, headers, *, timeout, max_response_bytes) -> WebhookResponse
Post = Callable[..., Awaitable[WebhookResponse]]
# Called on the loop with a row's outcome; None when it did not run (no
# thread started it in time, or it was cancelled at shutdown): the row goes
# back; STILL_RUNNING when the engine stops while a plain handler runs on in
# its thread: the row keeps its lease (it runs again once that ends, not
# alongside).
STILL_RUNNING = object()
OnOutcome = Callable[[object], None]


PLAIN_START_WAIT = 1.0  # seconds a plain handler's row waits for a thread at most


class AsyncRunner:
    def __init__(
        self,
        ceiling: SandboxCeiling,
        *,
        threads: HandlerThreads,
        post: Post,
        plain_start_wait: float = PLAIN_START_WAIT,
    ) -> None:
        self.ceiling, self.threads, self.post = ceiling, threads, post
        self.timeout = ceiling.timeout_ms / 1000
        self.plain_start_wait = plain_start_wait

    def start(
        self, prepared: Prepared, *, start_by: float, on_outcome: OnOutcome
    ) -> asyncio.Task | None:
        """Start the row; on_outcome gets its outcome on the loop. Returns
        the task of a webhook or async handler (cancel it to stop the row),
        None for a plain handler (HandlerThreads.withdraw_all stops those).
        A plain handler that no thread starts by `start_by`
        (time.monotonic()) is not run: on_outcome(None)."""
        if not posts_webhook(prepared):
            fn = handler_of(prepared)
            if isinstance(fn, Failure):
                on_outcome(fn)
                return None
            if not inspect.iscoroutinefunction(fn):
                self._submit(fn, prepared, start_by, on_outcome)
                return None
            runs_on: list[bool] = []  # set when cancelled while its blocking call runs
            coroutine = self._async_handler(fn, prepared, runs_on)
            return asyncio.create_task(_report(coroutine, on_outcome, runs_on))
        return asyncio.create_task(_report(self._webhook(prepared), on_outcome, []))

    async def run(self, prepared: Prepared, *, start_by: float) -> Outcome | None:
        """start() for one caller that awaits the outcome."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.start(prepared, start_by=start_by, on_outcome=future.set_result)
        return await self.threads.wait(future)

    def _submit(self, fn, prepared: Prepared, start_by: float, on_outcome: OnOutcome) -> None:
        ceiling, timeout, payload = self.ceiling, self.timeout, prepared.row.payload

        def call() -> Outcome:
            # On the thread: the deadline counts from here, and the result is
            # checked here too, so the loop only receives the outcome.
            try:
                result = fn(payload, context_for(prepared, timeout))
            except Exception as exc:
                return handler_failure(exc)
            return handler_result(result, ceiling)

        def done(outcome: Outcome | None, error: BaseException | None) -> None:
            if isinstance(error, SandboxTimeout):
                on_outcome(timed_out(ceiling))
            elif isinstance(error, NotStarted):
                on_outcome(None)
            elif isinstance(error, StillRunning):
                on_outcome(STILL_RUNNING)
            elif error is not None:  # not the handler's: call() catches those
                on_outcome(
                    Failure(f"dispatcher error: {type(error).__name__}: {error}", retryable=True)
                )
            else:
                on_outcome(outcome)

        # A row claimed for a plain handler waits for a thread at most a
        # moment: past it, it goes back to the outbox for a process with a
        # free thread (its attempt uncounted), rather than sit leased here,
        # holding its app's cap, on a check that ages.
        start_by = min(start_by, time.monotonic() + self.plain_start_wait)
        self.threads.submit(call, timeout=timeout, start_by=start_by, done=done)

    async def _async_handler(self, fn, prepared: Prepared, runs_on: list[bool]) -> Outcome:
        limit = asyncio.timeout(self.timeout)
        ctx = context_for(prepared, self.timeout)

        def run_blocking(call):
            # Bounded like plain handlers: on the handler threads, within the time left.
            return self.threads.run(
                call,
                timeout=ctx.remaining(),
                start_by=ctx.deadline,
                on_cancel_running=lambda: runs_on.append(True),
            )

        ctx.run_blocking = run_blocking
        try:
            async with limit:
                result = await fn(prepared.row.payload, ctx)
        except Exception as exc:
            if isinstance(exc, TimeoutError) and limit.expired():
                return timed_out(self.ceiling)
            # A handler's own TimeoutError (say, from a socket) is its failure.
            return handler_failure(exc)
        return handler_result(result, self.ceiling)

    async def _webhook(self, prepared: Prepared) -> Outcome:
        body, headers = webhook_request(prepared.script, prepared.row)
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.post(
                    prepared.script.webhook_url,
                    body,
                    headers,
                    timeout=self.timeout,
                    max_response_bytes=self.ceiling.max_result_bytes,
                )
        except Exception as exc:
            failure = webhook_failure(exc, self.ceiling)
            if failure is None:
                raise
            return failure
        return webhook_outcome(response)


async def _report(coroutine, on_outcome: OnOutcome, runs_on: list[bool]) -> None:
    try:
        outcome = await coroutine
    except asyncio.CancelledError:
        # Stopped at shutdown: nothing finished, and the row goes back;
        # unless a blocking call of the handler's still runs in a thread: then
        # it keeps its lease, so no other process runs it alongside.
        on_outcome(STILL_RUNNING if runs_on else None)
        raise
    except Exception as exc:
        outcome = Failure(f"dispatcher error: {type(exc).__name__}: {exc}", retryable=True)
    on_outcome(outcome)
