"""Per-request log context for the HTTP services (see :mod:`defectloop.common.log_context`).

Everything logged while a request runs carries ``request_id`` (the caller's ``X-Request-ID`` or a
new one), ``method``, ``path``, the ``trace_id`` of an incoming W3C ``traceparent`` and, once the
route matched, its ``site``/``camera``/``image_id`` path parameters as ``site_id``/``camera_id``/
``image_id`` (the names the events and the Kafka context use).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, clear_contextvars, get_contextvars

# Path parameter names the services use -> the log keys the events use.
PATH_PARAMS = {
    "site": "site_id",
    "site_id": "site_id",
    "camera": "camera_id",
    "camera_id": "camera_id",
    "image_id": "image_id",
}
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-(?P<trace_id>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def request_fields(headers: Mapping[str, str], method: str, path: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": headers.get("x-request-id") or uuid.uuid4().hex,
        "method": method,
        "path": path,
    }
    match = _TRACEPARENT.match(headers.get("traceparent", ""))
    if match:
        fields["trace_id"] = match["trace_id"]
    return fields


class HttpLogContextMiddleware:
    """Pure ASGI middleware: binds the request's fields for everything logged while it runs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        before = get_contextvars()
        try:
            bind_contextvars(**request_fields(headers, scope["method"], scope["path"]))
            await self.app(scope, receive, send)
        finally:
            # Also drops what the route bound (bind_path_params): an in-process caller (tests,
            # ASGI transports) shares this task and must get its own context back.
            clear_contextvars()
            bind_contextvars(**before)


async def bind_path_params(request: Request) -> None:
    """Route dependency: path parameters are only known once the route matched."""
    fields = {
        PATH_PARAMS[name]: value
        for name, value in request.path_params.items()
        if name in PATH_PARAMS
    }
    bind_contextvars(**fields)  # unbound by HttpLogContextMiddleware when the request ends


def install_http_log_context(app: FastAPI) -> None:
    """Bind per-request log context in ``app`` (call before its routes are added)."""
    app.add_middleware(HttpLogContextMiddleware)
    app.router.dependencies.append(Depends(bind_path_params))
