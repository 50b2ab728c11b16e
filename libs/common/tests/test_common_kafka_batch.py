"""The batch DLQ/commit discipline (defectloop.common.kafka_batch), without a broker."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from defectloop.common.errors import InvalidInputError, TransientError
from defectloop.common.events import ImageRejected, RejectReason
from defectloop.common.kafka_batch import BatchItem, Rejection, process_batch

pytestmark = pytest.mark.unit


class Letters:
    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []

    async def send(self, record: ConsumerRecord[Any, Any], *, reason: str, error: str) -> None:
        self.sent.append((record.offset, reason))


def _record(offset: int, value: bytes) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic="image.rejected",
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"s/cam",
        value=value,
        checksum=None,
        serialized_key_size=5,
        serialized_value_size=len(value),
        headers=(),
    )


def _valid(offset: int) -> ConsumerRecord[Any, Any]:
    event = ImageRejected(site_id="s", camera_id="cam", reason=RejectReason.EMPTY, detail="x")
    return _record(offset, event.model_dump_json().encode())


async def _run(records: list[ConsumerRecord[Any, Any]], handler: Any, letters: Letters) -> None:
    await process_batch(
        records,
        handler,
        model=ImageRejected,
        dead_letters=letters,  # type: ignore[arg-type]
        transient_attempts=2,
        transient_base_delay_s=0.0,
    )


async def test_batch_dead_letters_a_schema_violation_and_handles_the_rest() -> None:
    seen: list[int] = []

    async def handler(items: Sequence[BatchItem[Any]]) -> list[Rejection]:
        seen.extend(i.record.offset for i in items)
        return []

    letters = Letters()
    await _run([_valid(0), _record(1, b"not json"), _valid(2)], handler, letters)
    assert seen == [0, 2]
    assert letters.sent == [(1, "schema_violation")]


async def test_batch_dead_letters_the_rejections_the_handler_returns() -> None:
    async def handler(items: Sequence[BatchItem[Any]]) -> list[Rejection]:
        return [Rejection(items[1].record, "missing_blob", "gone")]

    letters = Letters()
    await _run([_valid(0), _valid(1), _valid(2)], handler, letters)
    assert letters.sent == [(1, "missing_blob")]


async def test_batch_narrows_an_unexpected_failure_down_to_the_failing_item() -> None:
    async def handler(items: Sequence[BatchItem[Any]]) -> list[Rejection]:
        if any(i.record.offset == 1 for i in items):
            raise RuntimeError("boom")
        return []

    letters = Letters()
    await _run([_valid(0), _valid(1), _valid(2)], handler, letters)
    assert letters.sent == [(1, "unhandled_error")]


async def test_batch_dead_letters_a_permanent_error_of_a_single_item_with_its_reason() -> None:
    async def handler(items: Sequence[BatchItem[Any]]) -> list[Rejection]:
        raise InvalidInputError("bad", reason="undecodable")

    letters = Letters()
    await _run([_valid(5)], handler, letters)
    assert letters.sent == [(5, "undecodable")]


async def test_batch_raises_a_persistent_transient_error_so_nothing_is_committed() -> None:
    calls = 0

    async def handler(items: Sequence[BatchItem[Any]]) -> list[Rejection]:
        nonlocal calls
        calls += 1
        raise TransientError("blob store down")

    letters = Letters()
    with pytest.raises(TransientError):
        await _run([_valid(0), _valid(1)], handler, letters)
    assert (calls, letters.sent) == (2, [])
