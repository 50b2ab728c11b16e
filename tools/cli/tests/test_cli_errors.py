"""CLI errors are one clear line plus a hint, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "defectloop.cli", *args],
        env={**os.environ, "DEFECTLOOP_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_unknown_option_is_one_line_with_a_hint(tmp_path: Path) -> None:
    result = _run(tmp_path, "kafka", "start", "--partitions", "zero")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error:")
    assert lines[1].startswith("hint:")
    assert "Traceback" not in result.stderr


def test_kafka_status_exits_1_when_down(tmp_path: Path) -> None:
    result = _run(tmp_path, "kafka", "status", DEFECTLOOP_KAFKA_PORT="1")
    assert result.returncode == 1
    assert "down" in result.stdout


def test_port_taken_by_a_stranger_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = _run(tmp_path, "kafka", "start", DEFECTLOOP_KAFKA_PORT=str(port))
    assert result.returncode == 1
    assert f"error: port {port} is taken" in result.stderr
    assert "hint:" in result.stderr
    assert "Traceback" not in result.stderr
