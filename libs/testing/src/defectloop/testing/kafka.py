"""Kafka helpers for tests, on the product's own readers (:mod:`defectloop.common.kafka_read`).

The test broker is shared (by every test of a session, and by every helper's tests on the
developer broker): topics hold other tests' messages, poison included. So collectors always
filter (``where``: by site, key or id) and skip what does not parse.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

from faststream.kafka import KafkaBroker
from pydantic import BaseModel

from defectloop.common.kafka import build_broker
from defectloop.common.kafka_auth import ScramCredentials
from defectloop.common.kafka_read import Record, TopicFollower, parse_event, read_events

M = TypeVar("M", bound=BaseModel)

__all__ = ["TcpForwarder", "TopicCollector", "collect", "read_to_end", "started_broker"]

read_to_end = read_events
"""``read_to_end(bootstrap, topic, model=..., where=...)``: the valid events of a topic, to its
end (the product's :func:`~defectloop.common.kafka_read.read_events`)."""


class TopicCollector(Generic[M]):
    """The parsed values of some topics that pass ``where``, gathered as they arrive."""

    def __init__(self, where: Callable[[M], bool] | None, model: type[M] | None = None) -> None:
        self.items: list[M] = []
        self._where = where
        self._model = model
        self._changed = asyncio.Condition()

    async def _on_record(self, record: Record) -> None:
        item: M | None = parse_event(record, self._model)
        if item is None or (self._where is not None and not self._where(item)):
            return
        async with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def of(self, kind: type[Any]) -> list[Any]:
        """The items that are instances of ``kind`` (a collector over several topics)."""
        return [i for i in self.items if isinstance(i, kind)]

    async def wait_for(
        self, predicate: Callable[[list[M]], bool], timeout_s: float = 60.0
    ) -> list[M]:
        """Return the items once ``predicate(items)`` holds; fail after ``timeout_s``."""

        async def until() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: predicate(self.items))

        try:
            await asyncio.wait_for(until(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout_s:.0f}s; collected {len(self.items)} items"
            ) from None
        return self.items


@asynccontextmanager
async def collect(
    bootstrap: str,
    topics: str | Sequence[str],
    *,
    where: Callable[[Any], bool] | None = None,
    model: type[Any] | None = None,
    credentials: ScramCredentials | None = None,
) -> AsyncIterator[TopicCollector[Any]]:
    """Collect ``topics`` (from their beginning, no consumer group) while the block runs.

    Values are parsed with ``model`` or each topic's own model (``DeadLetter`` for a DLQ).
    ``credentials``: the collector's login on a secured broker.
    """
    collector: TopicCollector[Any] = TopicCollector(where, model)
    follower = TopicFollower(
        bootstrap,
        topics,
        collector._on_record,
        client_id=f"test-collector-{uuid.uuid4().hex[:8]}",
        credentials=credentials,
    )
    await follower.start()
    try:
        yield collector
    finally:
        await follower.stop()


@asynccontextmanager
async def started_broker(
    bootstrap: str, client_id: str = "test-producer", credentials: ScramCredentials | None = None
) -> AsyncIterator[KafkaBroker]:
    """The product's broker (idempotent producer, telemetry), connected, for publishing."""
    broker = build_broker(bootstrap, client_id=client_id, credentials=credentials)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


class TcpForwarder:
    """Listens on ``port`` and forwards each connection to ``target``: Kafka "coming back".

    Point a client at ``127.0.0.1:port`` before :meth:`start`: it sees a broker that is down;
    after :meth:`start` it reaches the real one (whose metadata then names its own address).
    """

    def __init__(self, port: int, target: str) -> None:
        self.port = port
        self.host, target_port = target.rsplit(":", 1)
        self.target_port = int(target_port)
        self.server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
