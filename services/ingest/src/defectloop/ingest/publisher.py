"""Publishing ingest's events with a bound: ingest answers even while Kafka is down.

The shared app shell connects the broker in the background (``start_without_broker``); a publish
waits for Kafka's acknowledgement at most ``publish_timeout_s`` and raises
:class:`BrokerUnavailableError` otherwise (answered 503 ``broker_unavailable``; the image is kept).
"""

from __future__ import annotations

from defectloop.common.errors import BrokerUnavailableError
from defectloop.common.events import Event
from defectloop.common.kafka_connection import BackgroundConnection

_HINT = "the image is kept: retry the same upload later"


class EventPublisher:
    def __init__(self, connection: BackgroundConnection, *, publish_timeout_s: float) -> None:
        self._connection = connection
        self._publish_timeout_s = publish_timeout_s

    @property
    def connected(self) -> bool:
        return self._connection.connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        await self._connection.wait_connected(timeout)

    async def publish(self, event: Event) -> None:
        """Publish and wait for the ack, within ``publish_timeout_s`` in all."""
        try:
            await self._connection.publish(event, timeout_s=self._publish_timeout_s)
        except BrokerUnavailableError as exc:
            raise BrokerUnavailableError(str(exc), hint=_HINT) from exc
