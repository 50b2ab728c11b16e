"""Retry with jittered exponential backoff: the one policy every Kafka path uses (tenacity).

Jitter keeps the instances of a consumer group, or the services of a stack coming up together,
from retrying a recovering dependency in lock-step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from defectloop.common.errors import TransientError
from defectloop.common.logging import get_logger

T = TypeVar("T")

log = get_logger(__name__)


def _log_retry(event: str, fields: dict[str, object]) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning(
            event,
            attempt=state.attempt_number,
            retry_in_s=round(state.upcoming_sleep, 3),
            error=str(error)[:500],
            **fields,
        )

    return before_sleep


def backoff(
    *,
    attempts: int | None,
    base_delay_s: float,
    max_delay_s: float = 30.0,
    on: type[BaseException] | tuple[type[BaseException], ...] = TransientError,
    log_event: str = "transient_error_retrying",
    **log_fields: object,
) -> AsyncRetrying:
    """A tenacity retryer: ``attempts`` tries in all (``None``: until it succeeds).

    The n-th wait is ``base_delay_s * 2**(n-1)`` plus up to ``base_delay_s`` of jitter, capped at
    ``max_delay_s``; ``base_delay_s=0`` retries at once (tests). Only ``on`` is retried; the last
    failure is re-raised as itself. Each retry logs ``log_event`` with ``log_fields``.
    """
    return AsyncRetrying(
        retry=retry_if_exception_type(on),
        stop=stop_never if attempts is None else stop_after_attempt(attempts),
        wait=wait_exponential_jitter(multiplier=base_delay_s, jitter=base_delay_s, max=max_delay_s),
        before_sleep=_log_retry(log_event, log_fields),
        reraise=True,
    )


async def call_with_backoff(
    call: Callable[[], Awaitable[T]],
    *,
    attempts: int | None,
    base_delay_s: float,
    max_delay_s: float = 30.0,
    on: type[BaseException] | tuple[type[BaseException], ...] = TransientError,
    log_event: str = "transient_error_retrying",
    **log_fields: object,
) -> T:
    """``await call()``, retried per :func:`backoff`; returns its result."""
    retryer = backoff(
        attempts=attempts,
        base_delay_s=base_delay_s,
        max_delay_s=max_delay_s,
        on=on,
        log_event=log_event,
        **log_fields,
    )

    async def attempt() -> T:  # a coroutine function: tenacity awaits only those
        return await call()

    result: T = await retryer(attempt)
    return result


async def woken(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passes; True when it was set.

    The periodic loops of the services (pusher, outbox, job ticks) wait like this. Python 3.11's
    ``asyncio.wait_for(event.wait(), t)`` drops a cancellation that arrives as the event is set
    (cpython gh-86296, fixed in 3.12): the loop then runs on and the service's shutdown, which
    cancels and awaits it, hangs for ever. ``asyncio.timeout`` does not lose it.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
