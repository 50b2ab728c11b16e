"""Credentials of a Kafka principal (SASL/SCRAM), as keyword arguments for aiokafka clients.

The local production profile (``defectloop.cli.kafka_local``, profile ``production``) requires
SASL/SCRAM-SHA-256 on its client listener; a client without credentials is refused at connect.

Where a client's credentials come from (docs/security.md, "Services on the secured bus"):

- a service passes its settings' ``kafka_username`` / ``kafka_password`` explicitly (every
  builder in :mod:`defectloop.common` takes ``credentials=``);
- a client built without them (a CLI command, a helper that only knows the bootstrap address)
  uses the login of the block it runs in (:func:`logged_in_as`), else
  :func:`credentials_from_env`: ``DEFECTLOOP_KAFKA_USERNAME`` / ``DEFECTLOOP_KAFKA_PASSWORD``,
  which the supervisor sets in each service's environment. Neither: an anonymous (PLAINTEXT)
  client, the local profile's behaviour.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from defectloop.common.errors import ConfigError

SCRAM_MECHANISM = "SCRAM-SHA-256"
ENV_USERNAME = "DEFECTLOOP_KAFKA_USERNAME"
ENV_PASSWORD = "DEFECTLOOP_KAFKA_PASSWORD"


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


def credentials_from(username: str | None, password: str | None) -> ScramCredentials | None:
    """Both or neither: a user without a password (or the reverse) is a configuration error,
    not an anonymous client (which a secured broker would refuse with a vaguer message)."""
    if not username and not password:
        return None
    if not username or not password:
        missing = ENV_PASSWORD if username else ENV_USERNAME
        raise ConfigError(
            "Kafka credentials need both a username and a password",
            reason="kafka_credentials_incomplete",
            hint=f"set {missing} too (or neither, for a broker without SASL)",
        )
    return ScramCredentials(username, password)


def credentials_from_env(environ: Mapping[str, str] | None = None) -> ScramCredentials | None:
    """The process's credentials: ``DEFECTLOOP_KAFKA_USERNAME`` / ``_PASSWORD``, or None."""
    env = os.environ if environ is None else environ
    return credentials_from(env.get(ENV_USERNAME), env.get(ENV_PASSWORD))


_LOGIN: ContextVar[ScramCredentials | None] = ContextVar("defectloop_kafka_login", default=None)


@contextmanager
def logged_in_as(credentials: ScramCredentials | None) -> Iterator[None]:
    """Clients built without credentials inside the block (tasks and ``asyncio.run`` started in
    it included: they copy the context) log in as ``credentials``. For callers that cannot pass
    them down, e.g. the CLI deploying a model through the trainer's API as ``trainer``."""
    token = _LOGIN.set(credentials)
    try:
        yield
    finally:
        _LOGIN.reset(token)


def resolve(credentials: ScramCredentials | None) -> ScramCredentials | None:
    """``credentials`` if given, else the block's (:func:`logged_in_as`), else the process's
    (:func:`credentials_from_env`)."""
    if credentials is not None:
        return credentials
    return _LOGIN.get() or credentials_from_env()


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


async def check_login(
    bootstrap: str, credentials: ScramCredentials | None, *, timeout_s: float = 5.0
) -> None:
    """Raise :class:`ConfigError` (``kafka_login_refused``) if the broker refuses the login.

    Why a probe: aiokafka's bootstrap swallows the broker's SASL answer and raises only "Unable
    to bootstrap", which reads like an unreachable broker; a service would then retry forever
    with a password that can never work. Called after a failed connect, this one connection
    tells the two apart. Anything else (unreachable, timeout) is not a login problem: it
    returns, and the caller's own error stands.
    """
    if credentials is None:
        return
    from aiokafka.conn import create_conn
    from aiokafka.errors import AuthenticationFailedError, KafkaError, SaslAuthenticationFailed

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        conn = await asyncio.wait_for(
            create_conn(
                host,
                int(port),
                request_timeout_ms=int(timeout_s * 1000),
                **client_kwargs(credentials),
            ),
            timeout_s,
        )
    except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
        raise ConfigError(
            f"Kafka at {bootstrap} refused the login of user {credentials.username!r} "
            f"({credentials.mechanism}): {exc}",
            reason="kafka_login_refused",
            hint=f"check {ENV_USERNAME} / {ENV_PASSWORD} (or the service's own "
            "..._KAFKA_USERNAME / _PASSWORD); `defectloop kafka credentials "
            f"{credentials.username}` prints the local broker's",
        ) from exc
    except (KafkaError, OSError, TimeoutError, ValueError):
        return
    conn.close()
