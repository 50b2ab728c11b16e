"""Publishing to Kafka with a bound: ingest starts and answers even while Kafka is down.

The broker is connected in the background (retrying until it succeeds), so the HTTP server comes up
whatever Kafka's state; a publish waits for the broker's acknowledgement at most
``publish_timeout_s`` and raises :class:`BrokerUnavailableError` otherwise (the API maps it to 503).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from faststream.kafka import KafkaBroker

from defectloop.common.errors import BrokerUnavailableError
from defectloop.common.events import Event
from defectloop.common.kafka import publish_event
from defectloop.common.logging import get_logger

log = get_logger(__name__)

BrokerFactory = Callable[[], KafkaBroker]
_HINT = "the image is kept: retry the same upload later"


class EventPublisher:
    def __init__(
        self, broker_factory: BrokerFactory, *, publish_timeout_s: float, retry_s: float
    ) -> None:
        self._factory = broker_factory
        self._publish_timeout_s = publish_timeout_s
        self._retry_s = retry_s
        self._broker: KafkaBroker | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Start connecting in the background; returns at once."""
        self._task = asyncio.create_task(self._connect_until_done(), name="kafka-connect")

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def _connect_until_done(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            broker = self._factory()
            try:
                await asyncio.wait_for(broker.start(), self._publish_timeout_s * 2)
            except Exception as exc:  # aiokafka connection errors, timeouts
                log.warning("kafka_connect_failed", attempt=attempt, error=str(exc)[:300])
                with contextlib.suppress(Exception):
                    await broker.stop()
                await asyncio.sleep(self._retry_s)  # back-off between attempts, not a sync
                continue
            self._broker = broker
            self._connected.set()
            log.info("kafka_connected", attempt=attempt)
            return

    async def publish(self, event: Event) -> None:
        """Publish and wait for the ack, within ``publish_timeout_s`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._publish_timeout_s
        try:
            await asyncio.wait_for(self._connected.wait(), self._publish_timeout_s)
            assert self._broker is not None
            remaining = max(0.001, deadline - loop.time())
            await asyncio.wait_for(publish_event(self._broker, event), remaining)
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                f"Kafka did not acknowledge within {self._publish_timeout_s:g} s", hint=_HINT
            ) from exc
        except BrokerUnavailableError:
            raise
        except Exception as exc:  # aiokafka errors once connected: broker gone, not leader...
            raise BrokerUnavailableError(f"Kafka publish failed: {exc}", hint=_HINT) from exc

    async def healthy(self) -> bool:
        if self._broker is None or not self.connected:
            return False
        try:
            return bool(await self._broker.ping(timeout=2.0))
        except Exception:
            return False

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._broker is not None:
            await self._broker.stop()
            self._broker = None
        self._connected.clear()
