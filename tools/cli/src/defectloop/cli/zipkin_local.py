"""A real local Zipkin server (the trace UI of `defectloop up`) from its executable jar.

Zipkin publishes its server as one executable jar on Maven Central (``io.zipkin:zipkin-server``,
classifier ``exec``); it is fetched once with Maven into the user's cache, like Kafka's jars, and
runs on the machine's Java 17 with in-memory storage, listening on 127.0.0.1 only. The services
export their spans to it with OpenTelemetry's Zipkin JSON exporter
(``DEFECTLOOP_ZIPKIN_ENDPOINT``, see :func:`services_env`). See docs/observability.md.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from defectloop.cli.maven import fetch_jar
from defectloop.cli.processes import pid_from_file, port_open, start_daemon, stop_by_pid_file
from defectloop.common.errors import ComponentError
from defectloop.common.paths import cache_home, state_home

ZIPKIN_VERSION = os.environ.get("DEFECTLOOP_ZIPKIN_VERSION", "3.5.1")
ARTIFACT = "io.zipkin:zipkin-server:{version}:jar:exec"


@dataclass(frozen=True)
class ZipkinLayout:
    """Where one local Zipkin keeps its files, and its port."""

    home: Path
    port: int = 9411
    max_spans: int = 500_000

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def spans_endpoint(self) -> str:
        """Where services POST spans (Zipkin's v2 JSON intake)."""
        return f"{self.url}/api/v2/spans"

    @property
    def log_file(self) -> Path:
        return self.home / "zipkin.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "zipkin.pid"


def default_layout() -> ZipkinLayout:
    port = int(os.environ.get("DEFECTLOOP_ZIPKIN_PORT", "9411"))
    return ZipkinLayout(state_home() / "zipkin", port=port)


def services_env(layout: ZipkinLayout) -> dict[str, str]:
    """The environment that makes every service export its spans to this Zipkin."""
    return {"DEFECTLOOP_ZIPKIN_ENDPOINT": layout.spans_endpoint}


def jar_path(version: str = ZIPKIN_VERSION) -> Path:
    return cache_home() / "zipkin" / version / f"zipkin-server-{version}-exec.jar"


def ensure_jar(version: str = ZIPKIN_VERSION) -> Path:
    """Fetch Zipkin's executable jar from Maven Central once; return its path."""
    return fetch_jar(ARTIFACT.format(version=version), jar_path(version), what=f"Zipkin {version}")


def read_pid(layout: ZipkinLayout) -> int | None:
    return pid_from_file(layout.pid_file)


def healthy(layout: ZipkinLayout, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{layout.url}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def is_running(layout: ZipkinLayout) -> bool:
    return read_pid(layout) is not None and port_open(layout.port)


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ComponentError(
            "Java 17+ is needed to run Zipkin", hint="apt-get install -y openjdk-17-jre-headless"
        )
    return java


def start(layout: ZipkinLayout, *, timeout_s: float = 120.0) -> bool:
    """Start Zipkin unless it runs; return True if this call started it.

    Returns once ``/health`` answers (spans posted before that would be lost).
    """
    if is_running(layout):
        return False
    if read_pid(layout) is None and port_open(layout.port):
        raise ComponentError(
            f"port {layout.port} is taken by another process",
            hint="stop it, or set DEFECTLOOP_ZIPKIN_PORT to another port",
        )
    jar = ensure_jar()
    layout.home.mkdir(parents=True, exist_ok=True)
    heap = os.environ.get("DEFECTLOOP_ZIPKIN_HEAP", "-Xms64m -Xmx512m").split()
    start_daemon(
        [
            _java(),
            *heap,
            "-Djava.awt.headless=true",
            "-jar",
            str(jar),
            # 127.0.0.1 only: the stack's trace UI is not published on the network.
            "--armeria.ports[0].ip=127.0.0.1",
            f"--armeria.ports[0].port={layout.port}",
            "--armeria.ports[0].protocols[0]=http",
            "--zipkin.storage.type=mem",
            f"--zipkin.storage.mem.max-spans={layout.max_spans}",
            # Nor its other intakes, nor traces of itself.
            "--zipkin.collector.scribe.enabled=false",
            "--zipkin.self-tracing.enabled=false",
        ],
        name="Zipkin",
        port=layout.port,
        pid_file=layout.pid_file,
        log_file=layout.log_file,
        timeout_s=timeout_s,
    )
    # Its port opens last, once it serves; the health check makes sure the intake is up too.
    deadline = time.monotonic() + 30.0
    while not healthy(layout):
        if time.monotonic() > deadline:
            stop(layout)
            raise ComponentError(
                "Zipkin listens but does not report healthy", hint=f"see {layout.log_file}"
            )
        time.sleep(0.3)  # polling a child process for readiness, not synchronising test logic
    return True


def stop(layout: ZipkinLayout, *, timeout_s: float = 30.0) -> bool:
    """Stop Zipkin by its pid (SIGTERM; SIGKILL after ``timeout_s``)."""
    return stop_by_pid_file(layout.pid_file, timeout_s=timeout_s)
