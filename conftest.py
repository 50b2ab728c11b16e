"""Fixtures shared by every test directory: a real Kafka broker for integration tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node Kafka for this test session (or ``KAFKA_BOOTSTRAP`` when set)."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from defectloop.cli import kafka_local

    home: Path = tmp_path_factory.mktemp("kafka")
    port = _free_port()
    layout = kafka_local.KafkaLayout(home, port=port, controller_port=_free_port())
    kafka_local.start(layout, partitions=3)
    try:
        yield layout.bootstrap
    finally:
        kafka_local.stop(layout)


@pytest.fixture
def unique_group(request: pytest.FixtureRequest) -> str:
    """A consumer group of its own for each test, so tests never steal each other's messages."""
    return f"test-{request.node.name}-{os.getpid()}-{id(request)}"
