"""The admin client: create the stack's topics (idempotent), list a topic's partitions."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from defectloop.common.kafka_auth import ScramCredentials, client_kwargs, resolve
from defectloop.common.topics import TopicSpec
from defectloop.common.translate import kafka_errors

_HINT = "is Kafka running? `defectloop kafka status`"


def _admin(bootstrap: str, credentials: ScramCredentials | None) -> AIOKafkaAdminClient:
    """``credentials``: the login (default: the process's, ``DEFECTLOOP_KAFKA_USERNAME``)."""
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=15_000,
        **client_kwargs(resolve(credentials)),
    )


async def ensure_topics(
    bootstrap: str, specs: list[TopicSpec], *, credentials: ScramCredentials | None = None
) -> list[str]:
    """Create the missing topics of ``specs``; return the names created."""
    admin = _admin(bootstrap, credentials)
    try:
        with kafka_errors(f"cannot create topics on {bootstrap}", hint=_HINT):
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [s for s in specs if s.name not in existing]
            if missing:
                await admin.create_topics(
                    [
                        NewTopic(
                            s.name, s.partitions, replication_factor=1, topic_configs=s.configs()
                        )
                        for s in missing
                    ]
                )
        return [s.name for s in missing]
    finally:
        await admin.close()


async def partitions_of(
    bootstrap: str, topics: list[str], *, credentials: ScramCredentials | None = None
) -> dict[str, list[int]]:
    """The partition numbers of each of ``topics`` that exists (a missing topic is left out)."""
    admin = _admin(bootstrap, credentials)
    try:
        with kafka_errors(f"cannot describe topics on {bootstrap}", hint=_HINT):
            await admin.start()
            described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {
        entry["topic"]: sorted(int(p["partition"]) for p in entry.get("partitions", []))
        for entry in described
        if not entry.get("error_code") and entry.get("partitions")
    }
