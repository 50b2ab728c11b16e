"""The local stack's services as supervised background processes (pid files, log files).

Everything lives under a state home (``state_home()`` by default; a benchmark passes its own work
directory as ``home`` and its own port, so it never meets the running stack).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from defectloop.cli.processes import alive, pid_from_file, stop_by_pid_file
from defectloop.common.errors import ComponentError
from defectloop.common.paths import state_home


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int

    @property
    def env_prefix(self) -> str:
        return "DEFECTLOOP_" + self.name.upper().replace("-", "_") + "_"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("ingest", "defectloop.ingest.main", 8081),
    ServiceSpec("inference", "defectloop.inference.main", 8082),
    ServiceSpec("annotation-sync", "defectloop.annotation_sync.main", 8083),
    ServiceSpec("monitor", "defectloop.monitor.main", 8084),
    ServiceSpec("trainer", "defectloop.trainer.main", 8085),
)


DECISIONS_ROUTER = ServiceSpec("decisions-router", "defectloop.cli.decisions_router", 8086)
"""Not one of the five services: the process that copies each site's decisions to
``decisions.<site>`` for its MES (docs/security.md); ``defectloop up`` starts it after them."""


def stack_services(ports: dict[str, int] | None = None) -> tuple[ServiceSpec, ...]:
    """The five services, on their default ports unless ``ports`` (name -> port) moves some.

    A demo or a test that must not meet a running stack passes its own free ports.
    """
    moved = ports or {}
    return tuple(ServiceSpec(s.name, s.module, moved.get(s.name, s.port)) for s in SERVICES)


def service(name: str) -> ServiceSpec:
    """The spec of the service called ``name``."""
    for spec in SERVICES:
        if spec.name == name:
            return spec
    raise KeyError(name)


# The children this process started, by pid: holding the Popen keeps it from being reaped behind
# our back (subprocess reaps dropped Popens at the next start), so its exit code can be read.
_children: dict[int, subprocess.Popen[bytes]] = {}


def run_dir(home: Path | None = None) -> Path:
    return (home or state_home()) / "run"


def log_dir(home: Path | None = None) -> Path:
    return (home or state_home()) / "logs"


def pid_file(spec: ServiceSpec, home: Path | None = None) -> Path:
    return run_dir(home) / f"{spec.name}.pid"


def service_pid(spec: ServiceSpec, home: Path | None = None) -> int | None:
    return pid_from_file(pid_file(spec, home))


def health(spec: ServiceSpec, timeout: float = 2.0) -> dict[str, object] | None:
    try:
        resp = httpx.get(f"http://127.0.0.1:{spec.port}/health", timeout=timeout)
    except httpx.HTTPError:
        return None
    body: dict[str, object] = (
        resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    )
    return body if resp.status_code == 200 else None


def start_service(
    spec: ServiceSpec,
    *,
    env: dict[str, str] | None = None,
    home: Path | None = None,
    traces: bool = True,
) -> int:
    """Start ``spec`` in the background unless it runs; return its pid.

    ``traces=False`` leaves span export off (a benchmark does not time the trace writer).
    """
    pid = service_pid(spec, home)
    if pid is not None:
        return pid
    run_dir(home).mkdir(parents=True, exist_ok=True)
    log_dir(home).mkdir(parents=True, exist_ok=True)
    child_env = {
        **os.environ,
        "DEFECTLOOP_HOME": str(home or state_home()),
        "DEFECTLOOP_LOG_FORMAT": "json",
        "DEFECTLOOP_TRACE_FILE": str(log_dir(home) / "traces.jsonl"),
        f"{spec.env_prefix}PORT": str(spec.port),
        **(env or {}),
    }
    if not traces:
        del child_env["DEFECTLOOP_TRACE_FILE"]
    with (log_dir(home) / f"{spec.name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
        )
    pid_file(spec, home).write_text(str(proc.pid))
    _children[proc.pid] = proc
    return proc.pid


def wait_healthy(spec: ServiceSpec, timeout_s: float = 60.0, home: Path | None = None) -> None:
    """Return once ``spec`` answers its health check; a one-line :class:`ComponentError` pointing
    at its log if it exits first (noticed at once, not at the deadline) or is not healthy in time.
    """
    log = log_dir(home) / f"{spec.name}.log"
    deadline = time.monotonic() + timeout_s
    while health(spec) is None:
        exited, code = _exited(spec, home)
        if exited:
            pid_file(spec, home).unlink(missing_ok=True)
            how = "exited" if code is None else _exit_status(code)
            raise ComponentError(f"{spec.name} {how} at start", hint=f"see {log}")
        if time.monotonic() > deadline:
            raise ComponentError(
                f"{spec.name} not healthy after {timeout_s:.0f} s", hint=f"see {log}"
            )
        time.sleep(0.3)  # readiness polling of a child process


def _exited(spec: ServiceSpec, home: Path | None) -> tuple[bool, int | None]:
    """Whether the service's process is gone, and its exit code when we can know it.

    A child that died is a zombie until reaped, and a zombie still answers signal 0: the pid file
    alone says "alive" for the whole timeout. Our own child is polled (which reaps it); one started
    by an earlier CLI call is not our child, and its parent (init) reaps it.
    """
    try:
        pid = int(pid_file(spec, home).read_text().strip())
    except (FileNotFoundError, ValueError):
        return True, None
    proc = _children.get(pid)
    if proc is not None:
        code = proc.poll()
        if code is not None:
            del _children[pid]
        return code is not None, code
    return not alive(pid), None


def _exit_status(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def stop_service(spec: ServiceSpec, timeout_s: float = 30.0, home: Path | None = None) -> bool:
    pid = service_pid(spec, home)
    stopped = stop_by_pid_file(pid_file(spec, home), timeout_s=timeout_s)
    if pid is not None:
        _children.pop(pid, None)  # reaped by stop_by_pid_file's wait
    return stopped
