"""Credentials of a Kafka principal (SASL/SCRAM), as keyword arguments for aiokafka clients.

The local production profile (``defectloop.cli.kafka_local``, profile ``production``) requires
SASL/SCRAM-SHA-256 on its client listener; a client without credentials is refused at connect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCRAM_MECHANISM = "SCRAM-SHA-256"


@dataclass(frozen=True)
class ScramCredentials:
    """Who a client is on the bus: a SCRAM user (the ACLs' ``User:<username>``)."""

    username: str
    password: str
    mechanism: str = SCRAM_MECHANISM

    def __repr__(self) -> str:  # never print the password (logs, test failures)
        return f"ScramCredentials(username={self.username!r}, mechanism={self.mechanism!r})"

    @property
    def principal(self) -> str:
        return f"User:{self.username}"


def client_kwargs(credentials: ScramCredentials | None) -> dict[str, Any]:
    """aiokafka keyword arguments: none for a PLAINTEXT listener, SASL_PLAINTEXT + SCRAM else."""
    if credentials is None:
        return {}
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": credentials.mechanism,
        "sasl_plain_username": credentials.username,
        "sasl_plain_password": credentials.password,
    }
