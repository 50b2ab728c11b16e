"""Per-site decision topics: copies each champion decision of ``prediction.made`` to
``decisions.<site_id>``, so that each site's MES can be allowed to read its own site only.

Why a copy: Kafka authorizes per topic, and ``prediction.made`` carries every site. With one
topic per site, the ACL "``User:mes-A`` may READ ``decisions.A``" is the whole isolation rule.

The MES contract (docs/security.md): the value is the ``prediction.made`` event as inference
published it (same JSON, same ``schema_version``, same headers, W3C ``traceparent`` included),
the key is the same (``site/camera``, so order per camera holds), only ``role=champion``
decisions are copied, and delivery is at least once (dedupe on ``decision_id``).

At least once here: a batch is produced (idempotent producer), acknowledged, then its offsets
are committed; a crash in between copies the batch again, which the MES dedupes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import ValidationError

from defectloop.common.events import ModelRole, PredictionMade
from defectloop.common.kafka_auth import ScramCredentials, client_kwargs, resolve
from defectloop.common.logging import get_logger
from defectloop.common.topics import PREDICTION_MADE, decisions_topic

log = get_logger(__name__)

GROUP_ID = "decisions-router"


class DecisionFanOut:
    """Consumer group ``decisions-router`` on ``prediction.made``; producer to ``decisions.*``.

    The topics ``decisions.<site>`` must exist (they are created with the site's principals,
    see ``defectloop.cli.kafka_local``): a decision of a site without one fails loudly instead
    of inventing a topic nobody is allowed to read.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        credentials: ScramCredentials | None = None,
        group_id: str = GROUP_ID,
    ) -> None:
        auth = client_kwargs(resolve(credentials))  # default: the process's login
        self._consumer = AIOKafkaConsumer(
            PREDICTION_MADE,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **auth,
        )
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, client_id=group_id, enable_idempotence=True, **auth
        )
        self.copied = 0
        self.skipped = 0

    async def start(self) -> None:
        await self._producer.start()
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()
        await self._producer.stop()

    async def step(self, timeout_ms: int = 500) -> int:
        """Copy one polled batch, then commit it; return how many decisions were copied."""
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=500)
        sends: list[asyncio.Future[Any]] = []
        for records in batches.values():
            for record in records:
                target = self._target(record.value)
                if target is None:
                    self.skipped += 1
                    continue
                sends.append(
                    await self._producer.send(
                        target, record.value, key=record.key, headers=list(record.headers)
                    )
                )
        await asyncio.gather(*sends)  # acknowledged by the broker before the commit below
        if batches:
            await self._consumer.commit()
        self.copied += len(sends)
        return len(sends)

    def _target(self, value: bytes | None) -> str | None:
        if value is None:
            return None
        try:
            event = PredictionMade.model_validate_json(value)
        except ValidationError as exc:
            # Not a decision: inference's own consumers dead-letter it; the MES gets nothing.
            log.warning("decision_skipped", reason="schema_violation", error=str(exc)[:300])
            return None
        if event.role is not ModelRole.CHAMPION:
            return None  # shadow and challenger decisions are not for the MES
        return decisions_topic(event.site_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Copy until ``stop`` is set."""
        while not stop.is_set():
            await self.step()
