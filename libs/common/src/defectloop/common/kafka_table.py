"""A compacted topic as an in-process table: read its backlog to the end, then follow it.

Every process that needs the whole table (each inference instance needs every deployment; the
monitor and the trainer read ``model.deployed`` too) reads it without a consumer group. Each
value is validated as the topic's event model; one that is not valid goes to ``<topic>.dlq``
with reason ``schema_violation`` (through :class:`DeadLetterPublisher`) and the table keeps
following. A tombstone (``None`` value) hands its key to ``on_tombstone``: the row is deleted.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from defectloop.common.events import Event, model_for_topic
from defectloop.common.kafka import DeadLetterPublisher, broker_credentials
from defectloop.common.kafka_auth import ScramCredentials
from defectloop.common.kafka_read import Record, TopicFollower
from defectloop.common.logging import get_logger

EventT = TypeVar("EventT", bound=Event)

log = get_logger(__name__)


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if inspect.isawaitable(result):
        await result


class CompactedTableFollower(Generic[EventT]):
    """Feeds ``on_event(event)`` / ``on_tombstone(key)`` with every row of a compacted topic.

    :meth:`start` returns once the backlog (the table as it was at start) has been applied, so a
    service that starts it in ``before_start`` consumes nothing before its table is complete;
    later rows keep arriving in the background. The broker behind ``dead_letters`` must be
    connected before :meth:`start` (the shell connects it before ``before_start`` hooks run).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        on_event: Callable[[EventT], Awaitable[None] | None],
        on_tombstone: Callable[[bytes | None], Awaitable[None] | None],
        dead_letters: DeadLetterPublisher,
        client_id: str,
        credentials: ScramCredentials | None = None,
    ) -> None:
        # Default login: the one of the broker that dead-letters its bad rows (the service's
        # principal, which may read this topic), else the process's.
        login = credentials or broker_credentials(dead_letters.broker)
        self._model: type[Any] = model_for_topic(topic)
        self._topic = topic
        self._on_event = on_event
        self._on_tombstone = on_tombstone
        self._dead_letters = dead_letters
        self._follower = TopicFollower(
            bootstrap, topic, self._apply, client_id=client_id, credentials=login
        )
        self.applied = 0
        self.dead_lettered = 0

    @property
    def backlog_read(self) -> bool:
        return self._follower.backlog_read.is_set()

    async def start(self) -> None:
        """Read the table to its end (applying every row), then keep following it."""
        await self._follower.start()
        try:
            await self._follower.wait_backlog_read()
        except BaseException:
            await self._follower.stop()
            raise
        log.info("table_backlog_applied", topic=self._topic, rows=self.applied)

    async def stop(self) -> None:
        await self._follower.stop()

    async def _apply(self, record: Record) -> None:
        if record.value is None:
            await _maybe_await(self._on_tombstone(record.key))
            return
        try:
            event: EventT = self._model.model_validate_json(record.value)
        except ValidationError as exc:
            await self._dead_letters.send(record, reason="schema_violation", error=str(exc))
            self.dead_lettered += 1
            return
        self.applied += 1
        await _maybe_await(self._on_event(event))
