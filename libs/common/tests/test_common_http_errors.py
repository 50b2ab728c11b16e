"""The one JSON error body: every kind of failure answers ``{"error", "detail", "hint"}``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from defectloop.common import errors
from defectloop.common.http_errors import install_error_handlers
from defectloop.common.service import build_service_app
from defectloop.common.settings import ServiceSettings

pytestmark = pytest.mark.unit


class _Payload(BaseModel):
    count: int


def _app(raised: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, retry_after_s=7)

    @app.get("/raise")
    async def _raise() -> None:
        raise raised

    @app.post("/payload")
    async def _payload(payload: _Payload) -> dict[str, int]:
        return {"count": payload.count}

    return app


async def _call(app: FastAPI, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, path, **kwargs)


@pytest.mark.parametrize(
    ("error", "status", "reason"),
    [
        (errors.InvalidInputError("bad image", hint="send a PNG"), 422, "invalid_input"),
        (errors.BadRequestError("not JSON"), 400, "bad_request"),
        (errors.InvalidEventError("wrong schema"), 422, "schema_violation"),
        (errors.PermanentError("never works"), 400, "permanent_error"),
        (errors.PayloadTooLargeError("too big"), 413, "too_large"),
        (errors.UnsupportedMediaTypeError("jpeg"), 415, "unsupported_media_type"),
        (errors.UnauthenticatedError("no token"), 401, "unauthenticated"),
        (errors.ForbiddenError("other site"), 403, "forbidden"),
        (errors.NotFoundError("no such model", reason="model_not_found"), 404, "model_not_found"),
        (errors.ConflictError("exists"), 409, "conflict"),
        (errors.IntegrityMismatchError("digest"), 409, "integrity_mismatch"),
        (errors.BrokerUnavailableError("kafka down"), 503, "broker_unavailable"),
        (errors.ConfigError("bad settings"), 500, "config_invalid"),
    ],
)
async def test_a_project_error_answers_its_status_and_reason(
    error: errors.DefectloopError, status: int, reason: str
) -> None:
    response = await _call(_app(error), "GET", "/raise")
    assert response.status_code == status
    assert response.json() == {"error": reason, "detail": str(error), "hint": error.hint}


async def test_unauthenticated_asks_for_a_bearer_token() -> None:
    response = await _call(_app(errors.UnauthenticatedError("no token")), "GET", "/raise")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_transient_error_says_when_to_retry() -> None:
    response = await _call(_app(errors.TransientError("busy")), "GET", "/raise")
    assert (response.status_code, response.headers["Retry-After"]) == (503, "7")


async def test_an_http_exception_gets_the_body_with_its_status_phrase() -> None:
    response = await _call(_app(HTTPException(405, "use POST")), "GET", "/raise")
    assert (response.status_code, response.json()) == (
        405,
        {"error": "method_not_allowed", "detail": "use POST", "hint": None},
    )


async def test_an_http_exception_may_carry_its_own_reason_and_hint() -> None:
    raised = HTTPException(401, {"error": "bad_secret", "detail": "wrong", "hint": "check it"})
    response = await _call(_app(raised), "GET", "/raise")
    assert (response.status_code, response.json()) == (
        401,
        {"error": "bad_secret", "detail": "wrong", "hint": "check it"},
    )


async def test_an_unknown_route_is_a_not_found_body() -> None:
    response = await _call(_app(RuntimeError()), "GET", "/nowhere")
    assert (response.status_code, response.json()["error"]) == (404, "not_found")


async def test_a_request_failing_validation_names_the_field() -> None:
    response = await _call(_app(RuntimeError()), "POST", "/payload", json={"count": "many"})
    body = response.json()
    assert (response.status_code, body["error"]) == (422, "invalid_request")
    assert "body.count" in body["detail"]


async def test_an_unexpected_exception_is_a_500_that_leaks_nothing() -> None:
    response = await _call(_app(RuntimeError("secret internals")), "GET", "/raise")
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert "secret" not in response.text


async def test_the_service_shell_installs_the_body() -> None:
    settings = ServiceSettings(service_name="probe", kafka_bootstrap="127.0.0.1:1")
    app = build_service_app(settings)

    @app.get("/missing")
    async def _missing() -> None:
        raise errors.NotFoundError("no such blob", hint="check the uri")

    response = await _call(app, "GET", "/missing")
    assert (response.status_code, response.json()) == (
        404,
        {"error": "not_found", "detail": "no such blob", "hint": "check the uri"},
    )
