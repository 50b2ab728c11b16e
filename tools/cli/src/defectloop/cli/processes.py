"""Background processes of the local stack, tracked by pid file (Kafka, Label Studio, services)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from defectloop.common.errors import ComponentError


def pid_from_file(path: Path) -> int | None:
    """The pid recorded in ``path`` if that process is alive, else None."""
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a component we start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier CLI call): fall back to signal 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_by_pid_file(path: Path, *, timeout_s: float, group: bool = False) -> bool:
    """SIGTERM the recorded process (its whole session if ``group``), SIGKILL after ``timeout_s``.

    Returns False when nothing was running. The pid file is removed either way.
    """
    pid = pid_from_file(path)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)  # waiting for a process to exit
    path.unlink(missing_ok=True)
    return True


def start_daemon(
    argv: Sequence[str],
    *,
    name: str,
    port: int,
    pid_file: Path,
    log_file: Path,
    timeout_s: float,
) -> int:
    """Start ``argv`` in its own session (it survives the CLI; stopped by its pid file), output
    appended to ``log_file``; return its pid once ``127.0.0.1:port`` accepts connections.

    If it exits first, or the port is not open within ``timeout_s``, it is stopped and a
    one-line :class:`ComponentError` points at its log.
    """
    log = log_file.open("ab")
    proc = subprocess.Popen(
        list(argv),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while not port_open(port):
        if proc.poll() is not None:
            pid_file.unlink(missing_ok=True)
            raise ComponentError(
                f"{name} exited during start-up (code {proc.returncode})", hint=f"see {log_file}"
            )
        if time.monotonic() > deadline:
            stop_by_pid_file(pid_file, timeout_s=30.0)
            raise ComponentError(
                f"{name} did not accept connections within {timeout_s:.0f} s",
                hint=f"see {log_file}",
            )
        time.sleep(0.2)  # polling a port for readiness, not synchronising test logic
    return proc.pid
