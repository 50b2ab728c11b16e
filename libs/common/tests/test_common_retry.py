"""The one retry policy: transient errors are retried, the last one re-raised, others at once."""

from __future__ import annotations

import pytest

from defectloop.common.errors import InvalidInputError, TransientError
from defectloop.common.retry import call_with_backoff

pytestmark = pytest.mark.unit


async def test_retry_returns_the_result_once_a_transient_error_clears() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("down")
        return "ok"

    assert await call_with_backoff(flaky, attempts=5, base_delay_s=0.0) == "ok"
    assert len(calls) == 3


async def test_retry_reraises_the_last_transient_error_after_the_attempts() -> None:
    calls: list[int] = []

    async def down() -> None:
        calls.append(1)
        raise TransientError(f"down {len(calls)}")

    with pytest.raises(TransientError, match="down 4"):
        await call_with_backoff(down, attempts=4, base_delay_s=0.0)


async def test_retry_does_not_retry_other_errors() -> None:
    calls: list[int] = []

    async def bad() -> None:
        calls.append(1)
        raise InvalidInputError("bad")

    with pytest.raises(InvalidInputError):
        await call_with_backoff(bad, attempts=4, base_delay_s=0.0)
    assert len(calls) == 1
