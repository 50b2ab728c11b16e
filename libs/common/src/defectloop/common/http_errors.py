"""The one JSON error body of every defectloop HTTP service, installed by the app shell.

Every error answer is ``{"error": <reason>, "detail": <for people>, "hint": <what to try> | null}``:

- a :class:`~defectloop.common.errors.DefectloopError` -> the status of
  :func:`~defectloop.common.errors.http_status` (the one table), ``error`` = its ``reason``;
  401 adds ``WWW-Authenticate: Bearer``, a transient error (503) adds ``Retry-After``;
- ``HTTPException`` (routing 404/405, ``raise HTTPException``) -> its status, ``error`` = the
  status phrase in snake_case (``not_found``, ``method_not_allowed``) unless ``detail`` is a
  ``{"error", "detail", "hint"}`` mapping;
- a request that fails FastAPI's validation -> 422 ``invalid_request`` naming each field;
- a client that hung up before its body ended -> 400 ``client_disconnected`` (one log line);
- anything else -> 500 ``internal_error`` (logged with its traceback; nothing internal leaks).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from defectloop.common.errors import (
    DefectloopError,
    TransientError,
    UnauthenticatedError,
    http_status,
)
from defectloop.common.logging import get_logger

log = get_logger(__name__)

DEFAULT_RETRY_AFTER_S = 5


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(..., description="Machine-readable reason code.", examples=["not_found"])
    detail: Any = Field(None, description="What is wrong, for people.")
    hint: str | None = Field(None, description="What to try next.")


def error_response(
    status_code: int,
    error: str,
    detail: Any = None,
    hint: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=error, detail=detail, hint=hint)
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def error_example(error: str, detail: str, hint: str | None = None) -> dict[str, Any]:
    """An OpenAPI example of the error body (for a route's ``responses=``)."""
    return {"summary": error, "value": {"error": error, "detail": detail, "hint": hint}}


def _status_reason(status_code: int) -> str:
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


def _validation_detail(exc: RequestValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in err.get('loc', ()))}: {err.get('msg', '')}"
        for err in exc.errors()
    )[:2000]


def _declare_error_body_for_422(app: FastAPI) -> None:
    """The OpenAPI document says what the handler below answers: FastAPI declares every
    validated route's 422 as its own ``HTTPValidationError`` (``detail`` a list), but the body
    is :class:`ErrorBody` (found by Schemathesis, issue 12)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
        ref = {"$ref": "#/components/schemas/ErrorBody"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                content = operation.get("responses", {}).get("422", {}).get("content", {})
                body = content.get("application/json", {})
                if body.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                    body["schema"] = ref
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI, *, retry_after_s: int = DEFAULT_RETRY_AFTER_S) -> None:
    """Answer every error of ``app`` with :class:`ErrorBody` (see the module docstring)."""
    _declare_error_body_for_422(app)

    @app.exception_handler(DefectloopError)
    async def _project(_: Request, exc: DefectloopError) -> JSONResponse:
        status = http_status(exc)
        headers: dict[str, str] = {}
        if isinstance(exc, UnauthenticatedError):
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, TransientError):
            headers["Retry-After"] = str(retry_after_s)
        if status >= 500:
            log.warning("request_failed", reason=exc.reason, status=status, error=str(exc))
        return error_response(status, exc.reason, str(exc), exc.hint, headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        if isinstance(exc.detail, dict) and "error" in exc.detail:
            body = ErrorBody.model_validate(exc.detail)
            return error_response(exc.status_code, body.error, body.detail, body.hint, headers)
        return error_response(
            exc.status_code, _status_reason(exc.status_code), exc.detail, headers=headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(
            422,
            "invalid_request",
            _validation_detail(exc),
            "check the path, query, headers and body against /docs",
        )

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, _: ClientDisconnect) -> JSONResponse:
        # A client that hung up before its body ended (a slow-loris giving up, a gateway timing
        # out) is not a server error: it was a 500 with a traceback per connection.
        log.info("request_client_disconnected", path=request.url.path)
        return error_response(400, "client_disconnected", "the client closed before its body ended")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The last-resort boundary of a request: the client gets the one body, the log the trace.
        log.exception("request_unhandled_error", path=request.url.path, error=repr(exc)[:300])
        return error_response(
            500, "internal_error", "an unexpected error occurred", "see the service log"
        )
