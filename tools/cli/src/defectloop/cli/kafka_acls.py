"""Who may do what on the bus in the production profile: principals, their topics, their ACLs.

Each service is a SCRAM user (``User:<service>``) that may READ only the topics it consumes and
WRITE only the topics it produces (plus the dead-letter topics of what it consumes), in consumer
groups named ``<principal>`` or ``<principal>.<anything>``. Each site's MES is ``User:mes-<site>`` and may read
``decisions.<site>`` only. ``User:admin`` (the broker itself, topic creation) is the one super
user. Everything not allowed here is denied (``allow.everyone.if.no.acl.found=false``).

The table below is the source of truth; docs/security.md shows it as a table.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.protocol.admin import CreateAclsRequest

from defectloop.common import topics as t
from defectloop.common.errors import ComponentError, ConfigError
from defectloop.common.events import SITE_ID_PATTERN
from defectloop.common.kafka_auth import ScramCredentials, client_kwargs
from defectloop.common.topics import TopicSpec, decisions_topic, dlq_topic, topic_specs
from defectloop.common.translate import kafka_errors

ADMIN = "admin"
DECISIONS_ROUTER = "decisions-router"


class ResourceType(IntEnum):  # Kafka's ResourceType codes
    TOPIC = 2
    GROUP = 3


class PatternType(IntEnum):  # Kafka's PatternType codes
    LITERAL = 3
    PREFIXED = 4


class AclOperation(IntEnum):  # Kafka's AclOperation codes
    READ = 3
    WRITE = 4


_ALLOW = 3  # AclPermissionType.ALLOW


@dataclass(frozen=True)
class BusPrincipal:
    """A SCRAM user and the topics it may read and write (literal names, or prefixes)."""

    name: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    write_prefixes: tuple[str, ...] = ()
    groups: tuple[str, ...] = field(default=())

    def acls(self) -> list[tuple[ResourceType, str, PatternType, AclOperation]]:
        """(resource, name, pattern, operation) to ALLOW; READ/WRITE imply DESCRIBE."""
        rows = [(ResourceType.TOPIC, x, PatternType.LITERAL, AclOperation.READ) for x in self.reads]
        # A consumer dead-letters what it cannot process: it writes the DLQ of what it reads.
        writes = (*self.writes, *(dlq_topic(x) for x in self.reads if x in t.EVENT_TOPICS))
        rows += [(ResourceType.TOPIC, x, PatternType.LITERAL, AclOperation.WRITE) for x in writes]
        rows += [
            (ResourceType.TOPIC, x, PatternType.PREFIXED, AclOperation.WRITE)
            for x in self.write_prefixes
        ]
        # Consumer groups: its own name, or its name + "." + anything. The dot matters: a
        # plain prefix "mes-A" would also let mes-A use the groups of site "A-1" ("mes-A-1").
        for group in self.groups or (self.name,):
            rows += [
                (ResourceType.GROUP, group, PatternType.LITERAL, AclOperation.READ),
                (ResourceType.GROUP, f"{group}.", PatternType.PREFIXED, AclOperation.READ),
            ]
        return rows


def service_principals() -> list[BusPrincipal]:
    """The five services and the decision router, with the topics of docs/architecture.md."""
    return [
        BusPrincipal("ingest", writes=(t.IMAGE_CAPTURED, t.IMAGE_REJECTED)),
        BusPrincipal(
            "inference",
            reads=(t.IMAGE_CAPTURED, t.MODEL_DEPLOYED),
            writes=(t.PREDICTION_MADE, t.MODEL_REFUSED),
        ),
        BusPrincipal(
            "annotation-sync",
            reads=(t.PREDICTION_MADE, t.LABELS_REQUESTED),
            writes=(t.ANNOTATION_COMPLETED,),
        ),
        BusPrincipal(
            "monitor",
            reads=(
                t.IMAGE_CAPTURED,
                t.IMAGE_REJECTED,
                t.PREDICTION_MADE,
                t.ANNOTATION_COMPLETED,
                t.MODEL_DEPLOYED,
            ),
            writes=(t.METRIC_DEGRADED, t.METRIC_RECOVERED, t.LABELS_REQUESTED),
        ),
        BusPrincipal(
            "trainer",
            reads=(
                t.IMAGE_CAPTURED,
                t.ANNOTATION_COMPLETED,
                t.METRIC_DEGRADED,
                t.MODEL_DEPLOYED,
                t.MODEL_REFUSED,
            ),
            writes=(t.MODEL_DEPLOYED, t.LABELS_REQUESTED),
        ),
        BusPrincipal(
            DECISIONS_ROUTER, reads=(t.PREDICTION_MADE,), write_prefixes=(t.DECISIONS_PREFIX,)
        ),
    ]


def mes_principal(site: str) -> BusPrincipal:
    """The MES of ``site``: reads its site's decisions, nothing else."""
    return BusPrincipal(f"mes-{site}", reads=(decisions_topic(site),))


def principals(sites: Sequence[str]) -> list[BusPrincipal]:
    """Every principal of a stack serving ``sites`` (site ids as in events: topic-safe)."""
    bad = [s for s in sites if not re.fullmatch(SITE_ID_PATTERN, s)]
    if bad:
        raise ConfigError(
            f"invalid site id(s) {', '.join(map(repr, bad))}",
            hint="site ids are letters, digits, '_' and '-' (DEFECTLOOP_KAFKA_SITES=A,B)",
        )
    return [*service_principals(), *(mes_principal(s) for s in sites)]


def new_passwords(names: Sequence[str]) -> dict[str, str]:
    """A random password per principal (hex: safe inside the broker's JAAS and SCRAM syntax)."""
    return {name: secrets.token_hex(16) for name in names}


def site_topic_specs(sites: Sequence[str], partitions: int) -> list[TopicSpec]:
    return [TopicSpec(decisions_topic(s), partitions) for s in sites]


async def secure_setup(
    bootstrap: str,
    admin: ScramCredentials,
    *,
    sites: Sequence[str],
    partitions: int,
) -> None:
    """As ``admin``: create the stack's topics and each site's decision topic, then the ACLs of
    every principal (creating an ACL that exists is a no-op)."""
    client = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15_000, **client_kwargs(admin)
    )
    hint = "see the broker log in the state directory"
    try:
        with kafka_errors(f"cannot set up topics and ACLs on {bootstrap}", hint=hint):
            await client.start()
            specs = topic_specs(partitions) + site_topic_specs(sites, partitions)
            existing = set(await client.list_topics())
            missing = [s for s in specs if s.name not in existing]
            if missing:
                await client.create_topics(
                    [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs()) for s in missing]
                )
            for principal in principals(sites):
                for resource, name, pattern, operation in principal.acls():
                    request = CreateAclsRequest(
                        resource, name, pattern, f"User:{principal.name}", "*", operation, _ALLOW
                    )
                    # aiokafka's admin client has no create_acls, but its protocol has the
                    # request: sent as the admin client sends its own (to the controller).
                    response = await client._send_to_controller(request)
                    _check_acl_response(response, principal.name, name)
    finally:
        await client.close()


def _check_acl_response(response: object, principal: str, resource: str) -> None:
    # CreateAcls v1: creation_responses = [(error_code, error_message)]
    for error_code, message in getattr(response, "creation_responses", []):
        if error_code:
            raise ComponentError(
                f"Kafka refused the ACL for {principal} on {resource}: {error_code} {message}",
                hint="check the broker's authorizer settings (StandardAuthorizer)",
            )
