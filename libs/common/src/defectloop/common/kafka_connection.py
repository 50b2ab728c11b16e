"""A broker that connects in the background, so a service can serve before Kafka is reachable.

Ingest must answer camera gateways even while Kafka is down (503 ``broker_unavailable``, never a
refused connection): the connection is retried with jittered backoff until Kafka answers, and a
publish waits for it at most a bound, then raises :class:`BrokerUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence

from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

from defectloop.common.errors import BrokerUnavailableError, DefectloopError
from defectloop.common.events import Event
from defectloop.common.kafka import broker_credentials, publish_event
from defectloop.common.kafka_auth import check_login
from defectloop.common.logging import get_logger
from defectloop.common.retry import call_with_backoff

Hook = Callable[[], Awaitable[None]]

log = get_logger(__name__)


class BackgroundConnection:
    """Connects ``broker`` (retrying until it works), then runs the ``then`` hooks in order.

    :attr:`connected` is set as soon as the producer is connected (publishing works), before
    the hooks run. ``bootstrap`` (the broker's address): a failed attempt then checks whether the
    broker refused the login; if so it stops retrying and :attr:`failed` holds the reason.
    """

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        bootstrap: str | None = None,
        attempt_timeout_s: float = 10.0,
        retry_base_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        self.broker = broker
        self._bootstrap = bootstrap
        self._attempt_timeout_s = attempt_timeout_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.connected = asyncio.Event()
        self.failed: DefectloopError | None = None
        """Set when connecting can never succeed (the broker refused the login)."""

    async def _connect_once(self) -> None:
        # A cancellation can be lost: when the client's attempt fails in the same loop turn as
        # the cancel, ``wait_for`` returns the attempt's error instead of CancelledError, and
        # the retry loop would go on forever. The flag ends it at the next attempt regardless.
        if self._stopping:
            raise asyncio.CancelledError
        try:
            await asyncio.wait_for(self.broker.connect(), self._attempt_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(KafkaError, OSError):
                await self.broker.stop()  # drop the half-made clients before the next attempt
            if self._stopping:
                raise asyncio.CancelledError from exc
            # A refused login raises ConfigError here: not retried (a password does not heal).
            if self._bootstrap is not None:
                await check_login(self._bootstrap, broker_credentials(self.broker))
            raise BrokerUnavailableError(f"cannot connect to Kafka: {exc}") from exc

    async def _run(self, then: Sequence[Hook]) -> None:
        try:
            await call_with_backoff(
                self._connect_once,
                attempts=None,
                base_delay_s=self._retry_base_s,
                max_delay_s=self._retry_max_s,
                on=BrokerUnavailableError,
                log_event="kafka_connect_failed",
            )
        except DefectloopError as exc:
            self.failed = exc
            log.error("kafka_connect_gave_up", reason=exc.reason, error=str(exc), hint=exc.hint)
            return  # /health stays 503 and publish raises it; nothing else to wait for
        self.connected.set()
        log.info("kafka_connected")
        try:
            for hook in then:
                await hook()
        except Exception:
            log.exception("kafka_start_hook_failed")
            raise

    def start(self, then: Sequence[Hook] = ()) -> None:
        """Start connecting in the background; returns at once."""
        self._task = asyncio.get_running_loop().create_task(self._run(then), name="kafka-connect")

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self.connected.wait(), timeout)

    async def publish(self, event: Event, *, timeout_s: float) -> None:
        """Publish and wait for the ack, within ``timeout_s`` in all (connecting included).

        Raises :class:`BrokerUnavailableError` when Kafka is not connected or does not
        acknowledge in time.
        """
        if self.failed is not None:
            raise self.failed  # e.g. the login refused: 500 with its reason, not a 503 to retry
        try:
            async with asyncio.timeout(timeout_s):
                await self.connected.wait()
                await publish_event(self.broker, event)
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                f"Kafka did not acknowledge within {timeout_s:g} s"
            ) from exc
        except KafkaError as exc:  # once connected: broker gone, not leader, ...
            raise BrokerUnavailableError(f"Kafka publish failed: {exc}") from exc

    async def healthy(self) -> bool:
        """Connected, and the cluster answers now."""
        return self.connected.is_set() and bool(await self.broker.ping(timeout=2.0))

    async def stop(self) -> None:
        """Stop connecting if still trying; stopping the broker is the caller's (the shell's)."""
        self._stopping = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.connected.clear()
