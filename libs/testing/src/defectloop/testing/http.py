"""An ASGI app served for real on 127.0.0.1 for the length of a test (uvicorn, no mock transport).

Tests that drive a service over HTTP, or a CLI command that calls one, need the app listening on
a real port: these helpers start uvicorn, return once it accepts connections (uvicorn exposes a
readiness flag, not an event, so it is polled), and stop it (lifespan shutdown included) at the
end of the block.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn

from defectloop.testing.net import free_port


def _server(app: Any, port: int) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )


@asynccontextmanager
async def serve(
    app: Any, *, port: int | None = None, timeout_s: float = 60.0
) -> AsyncIterator[str]:
    """Serve ``app`` in this event loop; yields its base URL."""
    server = _server(app, port or free_port())
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + timeout_s
    try:
        while not server.started:
            if task.done():
                task.result()  # the startup error, if the server died
                raise RuntimeError("the server stopped before it started")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server did not start within {timeout_s:.0f}s")
            await asyncio.sleep(0.05)  # polling uvicorn's readiness flag
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await task


@contextmanager
def serve_in_thread(app: Any, *, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` from a background thread (for synchronous tests); yields its base URL."""
    server = _server(app, free_port())
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:  # polling uvicorn's readiness flag
        if not thread.is_alive():
            raise RuntimeError("the server stopped before it started")
        if time.monotonic() > deadline:
            raise AssertionError(f"the server did not start within {timeout_s:.0f}s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
