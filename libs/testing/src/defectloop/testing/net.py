"""Network helpers for tests: a free local port, and waiting for a condition without sleeping blind."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float = 60.0,
    interval_s: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``timeout_s``.

    One probe that hangs (a request to a service that is still starting) counts as a falsy
    answer at the deadline instead of blocking the test past it.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = await asyncio.wait_for(probe(), timeout=max(deadline - time.monotonic(), 0.1))
        except TimeoutError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval_s)
