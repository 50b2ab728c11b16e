"""The simulated annotators retry what an overloaded Label Studio answers 5xx (SQLite locked)."""

from __future__ import annotations

import httpx
import pytest

from defectloop.common.errors import TransientError
from defectloop.factory_sim.annotators import _RetryingTransport

pytestmark = pytest.mark.unit


def _server(statuses: list[int], seen: list[bytes]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.read())
        return httpx.Response(statuses[len(seen) - 1], json={"n": len(seen)})

    return httpx.MockTransport(answer)


async def test_a_locked_database_answer_is_sent_again_with_the_same_body() -> None:
    seen: list[bytes] = []
    transport = _RetryingTransport(base_delay_s=0, inner=_server([500, 503, 200], seen))
    async with httpx.AsyncClient(base_url="http://ls", transport=transport) as client:
        response = await client.post("/api/tasks/1/annotations/", json={"result": []})
    assert response.status_code == 200
    assert response.json() == {"n": 3}
    assert seen == [b'{"result":[]}'] * 3


async def test_client_errors_are_not_retried() -> None:
    seen: list[bytes] = []
    transport = _RetryingTransport(base_delay_s=0, inner=_server([404, 200], seen))
    async with httpx.AsyncClient(base_url="http://ls", transport=transport) as client:
        response = await client.get("/api/projects/1/next")
    assert response.status_code == 404
    assert len(seen) == 1


async def test_a_server_that_stays_down_ends_in_a_transient_error_naming_the_request() -> None:
    seen: list[bytes] = []
    transport = _RetryingTransport(attempts=3, base_delay_s=0, inner=_server([500] * 3, seen))
    async with httpx.AsyncClient(base_url="http://ls", transport=transport) as client:
        with pytest.raises(TransientError, match="answered 500 to GET /api/current-user/token"):
            await client.get("/api/current-user/token")
    assert len(seen) == 3
