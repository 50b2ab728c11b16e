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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from defectloop.cli.processes import pid_from_file, port_open, stop_by_pid_file
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
    target = jar_path(version)
    if target.is_file():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ComponentError(
            "Maven (mvn) is needed once to fetch Zipkin's server jar",
            hint="install it: apt-get install -y maven (Java 17 is needed too)",
        )
    staging = target.parent / "partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    proc = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "dependency:copy",
            f"-Dartifact={ARTIFACT.format(version=version)}",
            f"-DoutputDirectory={staging}",
        ],
        cwd=staging,  # no pom here: Maven runs the goal stand-alone
        capture_output=True,
        text=True,
        check=False,
    )
    fetched = staging / target.name
    if proc.returncode != 0 or not fetched.is_file():
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise ComponentError(
            f"Maven could not fetch Zipkin {version}: {' / '.join(tail)}",
            hint="check that Maven Central is reachable and DEFECTLOOP_ZIPKIN_VERSION is a release",
        )
    fetched.rename(target)  # atomic: a half-fetched jar is never mistaken for a full one
    shutil.rmtree(staging, ignore_errors=True)
    return target


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

    Returns once ``/health`` answers (spans posted before that would be refused).
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
    env = {
        **os.environ,
        "STORAGE_TYPE": "mem",
        "MEM_MAX_SPANS": str(layout.max_spans),
        # Zipkin would otherwise also open its scribe/collector ports and self-trace.
        "COLLECTOR_SCRIBE_ENABLED": "false",
        "SELF_TRACING_ENABLED": "false",
    }
    log = layout.log_file.open("ab")
    proc = subprocess.Popen(
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
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # survives the CLI; stopped by pid
    )
    log.close()
    layout.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while not healthy(layout):
        if proc.poll() is not None:
            layout.pid_file.unlink(missing_ok=True)
            raise ComponentError(
                f"Zipkin exited during start-up (code {proc.returncode})",
                hint=f"see {layout.log_file}",
            )
        if time.monotonic() > deadline:
            stop(layout)
            raise ComponentError(
                f"Zipkin did not answer within {timeout_s:.0f} s", hint=f"see {layout.log_file}"
            )
        time.sleep(0.3)  # polling a child process for readiness, not synchronising test logic
    return True


def stop(layout: ZipkinLayout, *, timeout_s: float = 30.0) -> bool:
    """Stop Zipkin by its pid (SIGTERM; SIGKILL after ``timeout_s``)."""
    return stop_by_pid_file(layout.pid_file, timeout_s=timeout_s)
