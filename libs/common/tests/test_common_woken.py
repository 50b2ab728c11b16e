"""``woken``: the periodic loops' wait, which never loses a cancellation (service shutdown)."""

from __future__ import annotations

import asyncio

import pytest

from defectloop.common.retry import woken

pytestmark = pytest.mark.unit


async def test_returns_whether_the_event_was_set_or_the_period_passed() -> None:
    event = asyncio.Event()
    assert await woken(event, 0.01) is False
    event.set()
    assert await woken(event, 10) is True


async def test_a_cancel_arriving_as_the_event_is_set_stops_the_loop() -> None:
    """The race that hung a service's shutdown: the event is set and the task cancelled before
    the task runs again (asyncio.wait_for on 3.11 returned normally and the loop went on)."""
    event = asyncio.Event()
    rounds = 0
    waiting = asyncio.Event()

    async def loop() -> None:
        nonlocal rounds
        while True:
            waiting.set()
            await woken(event, 30)
            event.clear()
            rounds += 1

    task = asyncio.create_task(loop())
    await waiting.wait()  # the loop is parked in woken()
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert task.cancelled()
    assert rounds == 0
