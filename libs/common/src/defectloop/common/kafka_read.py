"""Reading topics without a consumer group: to their end (:func:`read_topic`), or following them.

No group means no commits and no rebalance: every reader sees every partition it asks for, from
the beginning. That is what a table (the compacted ``model.deployed``), a report of what a run
produced, or a benchmark's receipt counter needs; services that *process* events use a group
(:mod:`defectloop.common.kafka`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError
from pydantic import BaseModel, ValidationError

from defectloop.common.errors import (
    BrokerUnavailableError,
    ConfigError,
    DefectloopError,
    TransientError,
)
from defectloop.common.events import DeadLetter, model_for_topic
from defectloop.common.kafka_admin import partitions_of
from defectloop.common.kafka_auth import ScramCredentials, client_kwargs, resolve
from defectloop.common.logging import get_logger
from defectloop.common.retry import call_with_backoff
from defectloop.common.topics import DLQ_SUFFIX
from defectloop.common.translate import kafka_errors

Record: TypeAlias = ConsumerRecord[Any, Any]
ModelT = TypeVar("ModelT", bound=BaseModel)
OnRecord = Callable[[Record], Awaitable[None] | None]

log = get_logger(__name__)


def _as_list(topics: str | Sequence[str]) -> list[str]:
    return [topics] if isinstance(topics, str) else list(topics)


async def assign_from_beginning(
    consumer: AIOKafkaConsumer,
    bootstrap: str,
    topics: str | Sequence[str],
    *,
    partitions: Iterable[int] | None = None,
    credentials: ScramCredentials | None = None,
) -> dict[TopicPartition, int]:
    """Assign ``topics`` (all partitions, or only ``partitions``) from offset 0; return end offsets.

    Raises :class:`ConfigError` when a topic does not exist (nothing to read is not "empty").
    ``credentials``: the login of the metadata lookup (default: the process's).
    """
    names = _as_list(topics)
    known = await partitions_of(bootstrap, names, credentials=credentials)
    wanted = None if partitions is None else set(partitions)
    tps: list[TopicPartition] = []
    for topic in names:
        if topic not in known:
            raise ConfigError(
                f"topic {topic} does not exist",
                hint="create the stack's topics first (defectloop kafka start)",
            )
        tps += [TopicPartition(topic, p) for p in known[topic] if wanted is None or p in wanted]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    end: dict[TopicPartition, int] = await consumer.end_offsets(tps)
    return end


async def caught_up(consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
    """Whether the consumer's position reached ``end`` on every partition."""
    for tp, offset in end.items():
        if await consumer.position(tp) < offset:
            return False
    return True


def _consumer(
    bootstrap: str, client_id: str, credentials: ScramCredentials | None
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_kwargs(credentials),
    )


async def _start(consumer: AIOKafkaConsumer, bootstrap: str) -> None:
    try:
        with kafka_errors(
            f"cannot reach Kafka at {bootstrap}", hint="is Kafka running? `defectloop kafka status`"
        ):
            await consumer.start()
    except DefectloopError:
        await consumer.stop()
        raise


async def read_topic(
    bootstrap: str,
    topics: str | Sequence[str],
    *,
    partitions: Iterable[int] | None = None,
    client_id: str = "defectloop-reader",
    timeout_s: float = 120.0,
    credentials: ScramCredentials | None = None,
) -> list[Record]:
    """Every record of ``topics`` (or of their ``partitions``) up to the end offsets seen at start.

    Records come in partition order (within a partition, in offset order). Records published
    after the call began may or may not be included. Raises :class:`BrokerUnavailableError` when
    the end is not reached within ``timeout_s`` (a partition without a leader, a lost broker).
    ``credentials``: the reader's login (default: the process's, ``DEFECTLOOP_KAFKA_USERNAME``).
    """
    login = resolve(credentials)
    consumer = _consumer(bootstrap, client_id, login)
    await _start(consumer, bootstrap)
    records: list[Record] = []
    try:
        async with asyncio.timeout(timeout_s):
            end = await assign_from_beginning(
                consumer, bootstrap, topics, partitions=partitions, credentials=login
            )
            while not await caught_up(consumer, end):
                for tp, batch in (await consumer.getmany(timeout_ms=500)).items():
                    records += [r for r in batch if r.offset < end[tp]]
        return records
    except TimeoutError as exc:
        raise BrokerUnavailableError(
            f"read {len(records)} records of {topics} but not to the end in {timeout_s:g} s",
            hint="is every partition's leader up? `defectloop kafka status`",
        ) from exc
    finally:
        await consumer.stop()


def topic_model(topic: str) -> type[BaseModel]:
    """The model of a topic's values: its event model, or :class:`DeadLetter` for a DLQ."""
    return DeadLetter if topic.endswith(DLQ_SUFFIX) else model_for_topic(topic)


def parse_event(record: Record, model: type[ModelT] | None = None) -> ModelT | None:
    """The record's value as ``model`` (default: :func:`topic_model`); None if it is not valid."""
    cls: type[Any] = model if model is not None else topic_model(record.topic)
    if record.value is None:
        return None
    try:
        event: ModelT = cls.model_validate_json(record.value)
    except ValidationError:
        return None
    return event


async def read_events(
    bootstrap: str,
    topic: str,
    *,
    model: type[ModelT] | None = None,
    where: Callable[[ModelT], bool] | None = None,
    partitions: Iterable[int] | None = None,
    client_id: str = "defectloop-reader",
    timeout_s: float = 120.0,
    credentials: ScramCredentials | None = None,
) -> list[ModelT]:
    """The valid events of ``topic`` up to its end, filtered by ``where``.

    Records that are not a valid event (someone else's poison, a tombstone) are skipped: they are
    the dead-letter queue's business, not a reader's.
    """
    found: list[ModelT] = []
    records = await read_topic(
        bootstrap,
        topic,
        partitions=partitions,
        client_id=client_id,
        timeout_s=timeout_s,
        credentials=credentials,
    )
    for record in records:
        event: ModelT | None = parse_event(record, model)
        if event is not None and (where is None or where(event)):
            found.append(event)
    return found


class TopicFollower:
    """Reads partitions from the beginning, then keeps following them, calling ``on_record``.

    :attr:`backlog_read` is set once every record up to the end offsets seen at :meth:`start` was
    handed to ``on_record``. ``on_record`` may be sync or async; a Kafka or transient error it
    raises is retried with backoff (the record is not skipped), any other error is logged and
    the record skipped, so one bad record never stops the follower.
    """

    def __init__(
        self,
        bootstrap: str,
        topics: str | Sequence[str],
        on_record: OnRecord,
        *,
        client_id: str,
        partitions: Iterable[int] | None = None,
        credentials: ScramCredentials | None = None,
    ) -> None:
        self._bootstrap = bootstrap
        self._credentials = resolve(credentials)  # default: the process's login
        self._topics = _as_list(topics)
        self._on_record = on_record
        self._client_id = client_id
        self._partitions = None if partitions is None else list(partitions)
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.backlog_read = asyncio.Event()

    async def start(self) -> None:
        """Assign from the beginning and start following in the background."""
        consumer = _consumer(self._bootstrap, self._client_id, self._credentials)
        await _start(consumer, self._bootstrap)
        try:
            end = await assign_from_beginning(
                consumer,
                self._bootstrap,
                self._topics,
                partitions=self._partitions,
                credentials=self._credentials,
            )
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        log.info("topic_backlog_reading", topics=self._topics, end_offsets=sum(end.values()))
        self._task = asyncio.get_running_loop().create_task(
            self._run(consumer, end), name=f"follow-{'+'.join(self._topics)}"
        )

    @property
    def running(self) -> bool:
        """Started and still following (False once it stopped on an error)."""
        return self._task is not None and not self._task.done()

    async def wait_backlog_read(self) -> None:
        """Return once the backlog was read; raises what stopped the follower, if it stopped."""
        backlog = asyncio.ensure_future(self.backlog_read.wait())
        waiting: set[asyncio.Future[Any]] = {backlog}
        if self._task is not None:
            waiting.add(self._task)
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            backlog.cancel()
        if not self.backlog_read.is_set() and self._task is not None and self._task.done():
            self._task.result()
            raise ConfigError(f"the follower of {self._topics} stopped before the backlog")

    async def _handle(self, record: Record) -> None:
        async def call() -> None:
            result = self._on_record(record)
            if inspect.isawaitable(result):
                await result

        try:
            await call_with_backoff(
                call,
                attempts=None,
                base_delay_s=0.5,
                max_delay_s=10.0,
                on=(KafkaError, TransientError),
                log_event="follow_record_retrying",
                topic=record.topic,
                offset=record.offset,
            )
        except Exception:  # a bug in one record's handling must not stop the table
            log.exception(
                "follow_record_failed",
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )

    async def _run(self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> None:
        async def fetch() -> dict[TopicPartition, list[Record]]:
            batches: dict[TopicPartition, list[Record]] = await consumer.getmany(timeout_ms=500)
            return batches

        try:
            await self._follow(consumer, end, fetch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("follow_failed", topics=self._topics)
            raise

    async def _follow(
        self,
        consumer: AIOKafkaConsumer,
        end: dict[TopicPartition, int],
        fetch: Callable[[], Awaitable[dict[TopicPartition, list[Record]]]],
    ) -> None:
        while True:
            if not self.backlog_read.is_set() and await caught_up(consumer, end):
                self.backlog_read.set()
                log.info("topic_backlog_read", topics=self._topics)
            batches = await call_with_backoff(
                fetch,
                attempts=None,
                base_delay_s=0.5,
                max_delay_s=10.0,
                on=KafkaError,
                log_event="follow_fetch_retrying",
                topics=self._topics,
            )
            for records in batches.values():
                for record in records:
                    await self._handle(record)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # logged in _run
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
