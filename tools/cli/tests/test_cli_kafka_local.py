"""`defectloop kafka` gives a real broker that an independent client (librdkafka) can use."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from defectloop.common import topics
from defectloop.testing.net import free_port

pytestmark = pytest.mark.integration


def test_independent_client_lists_the_topics(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    names = set(admin.list_topics(timeout=30).topics)
    assert set(topics.EVENT_TOPICS) <= names
    assert {topics.dlq_topic(t) for t in topics.EVENT_TOPICS} <= names


def test_model_deployed_is_log_compacted(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    resource = ConfigResource("topic", topics.MODEL_DEPLOYED)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    assert configs["cleanup.policy"].value == "compact"


def test_independent_client_produces_and_consumes(kafka_bootstrap: str) -> None:
    marker = uuid.uuid4().hex.encode()
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    producer.produce(topics.METRIC_DEGRADED, key=b"librdkafka", value=marker)
    assert producer.flush(30) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"librdkafka-{marker.decode()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topics.METRIC_DEGRADED])
    try:
        seen = False
        for _ in range(120):  # bounded: poll() blocks up to 1 s each
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None and msg.value() == marker:
                seen = True
                break
    finally:
        consumer.close()
    assert seen


def _cli(home: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEFECTLOOP_HOME": str(home), "DEFECTLOOP_KAFKA_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "-m", "defectloop.cli", "kafka", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_cli_start_is_idempotent_and_stop_leaves_no_process(tmp_path: Path) -> None:
    import socket

    port = free_port()
    # the controller listens on port+1: make sure it is free too
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port + 1))

    assert _cli(tmp_path, port, "status").returncode == 1
    first = _cli(tmp_path, port, "start")
    assert first.returncode == 0, first.stderr
    assert f"127.0.0.1:{port}" in first.stdout
    pid = int((tmp_path / "kafka" / "broker.pid").read_text())
    try:
        second = _cli(tmp_path, port, "start")
        assert second.returncode == 0
        assert "already running" in second.stdout
        assert _cli(tmp_path, port, "status").returncode == 0
    finally:
        stopped = _cli(tmp_path, port, "stop")
    assert stopped.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert _cli(tmp_path, port, "status").returncode == 1
