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
    timed_out,
    webhook_failure,
    webhook_outcome,
    webhook_request,
)
from picloud.runtime.handler_threads import HandlerThreads, NotStarted
from picloud.runtime.sandbox import SandboxTimeout
from picloud.runtime.webhooks import WebhookResponse

# post(url, body, headers, *, timeout, max_response_bytes) -> WebhookResponse
Post = Callable[..., Awaitable[WebhookResponse]]


class AsyncRunner:
    def __init__(self, ceiling: SandboxCeiling, *, threads: HandlerThreads, post: Post) -> None:
        self.ceiling, self.threads, self.post = ceiling, threads, post
        self.timeout = ceiling.timeout_ms / 1000

    async def run(self, prepared: Prepared, *, start_by: float) -> Outcome:
        """The row's outcome. Raises NotStarted when a plain handler found
        no free thread by `start_by` (time.monotonic()): nothing ran."""
        if prepared.script.runtime == "webhook":
            return await self._webhook(prepared)
        return await self._python(prepared, start_by)

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

    async def _python(self, prepared: Prepared, start_by: float) -> Outcome:
        fn = handler_of(prepared.script)
        if isinstance(fn, Failure):
            return fn
        payload = prepared.row.payload
        limit = asyncio.timeout(self.timeout)
        try:
            if inspect.iscoroutinefunction(fn):
                ctx = context_for(prepared, self.timeout)
                async with limit:
                    result = await fn(payload, ctx)
            else:

                def call():
                    # The deadline counts from when a thread starts the handler.
                    return fn(payload, context_for(prepared, self.timeout))

                result = await self.threads.run(call, timeout=self.timeout, start_by=start_by)
        except SandboxTimeout:
            return timed_out(self.ceiling)
        except NotStarted:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError) and limit.expired():
                return timed_out(self.ceiling)
            # A handler's own TimeoutError (say, from a socket) is its failure.
            return handler_failure(exc)
        return handler_result(result, self.ceiling)
