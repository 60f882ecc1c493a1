"""How long to wait before the next attempt: exponential, capped, jittered."""

from __future__ import annotations

import random
from collections.abc import Callable

from picloud.config import RetryPolicy
from triggers.repository import TriggerRecord


def retry_delay(
    failed_attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after attempt number `failed_attempt` (1 = the first) failed.

    base * 2**(n-1), capped at max; jitter j takes a random share of up to j
    off it (so concurrent failures spread out instead of retrying in step).
    """
    exponent = min(failed_attempt - 1, 62)  # beyond that the cap has long won
    delay_ms = min(policy.max_delay_ms, policy.base_delay_ms * 2**exponent)
    delay_ms *= 1 - policy.jitter * rand()
    return delay_ms / 1000


def policy_for(trigger: TriggerRecord | None, default: RetryPolicy) -> RetryPolicy:
    """The trigger's own overrides on top of PICLOUD_TRIGGER_RETRY_*."""
    if trigger is None:
        return default
    base = trigger.retry_base_delay_ms or default.base_delay_ms
    cap = trigger.retry_max_delay_ms or max(default.max_delay_ms, base)
    return RetryPolicy(
        max_attempts=trigger.max_attempts or default.max_attempts,
        base_delay_ms=base,
        max_delay_ms=max(cap, base),
        jitter=default.jitter,
    )
