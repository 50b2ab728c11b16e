"""A real S3-compatible server on 127.0.0.1: S3Proxy (``org.gaul:s3proxy``) on a local directory.

S3Proxy speaks the S3 REST API (signatures v2/v4 checked) over Apache jclouds' ``filesystem``
backend, so the S3 blob store is exercised against a real server, not a Python mock. Its
``jar-with-dependencies`` is fetched once from Maven Central into the user's cache (Maven, as
for Kafka); Java 17 runs it.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from defectloop.cli.maven import fetch_jar
from defectloop.cli.processes import pid_from_file, port_open, start_daemon, stop_by_pid_file
from defectloop.common.errors import ComponentError
from defectloop.common.paths import cache_home, state_home

S3PROXY_VERSION = os.environ.get("DEFECTLOOP_S3PROXY_VERSION", "2.6.0")
REGION = "us-east-1"


@dataclass(frozen=True)
class S3ProxyLayout:
    """Where one local S3Proxy keeps its files, its port and its (generated) credentials."""

    home: Path
    port: int = 9000

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def config(self) -> Path:
        return self.home / "s3proxy.properties"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials"

    @property
    def log_file(self) -> Path:
        return self.home / "s3proxy.log"

    @property
    def pid_file(self) -> Path:
        return self.home / "s3proxy.pid"


def default_layout() -> S3ProxyLayout:
    return S3ProxyLayout(
        state_home() / "s3proxy", port=int(os.environ.get("DEFECTLOOP_S3PROXY_PORT", "9000"))
    )


def jar_path(version: str = S3PROXY_VERSION) -> Path:
    return cache_home() / "s3proxy" / version / f"s3proxy-{version}-jar-with-dependencies.jar"


def ensure_jar(version: str = S3PROXY_VERSION) -> Path:
    """Fetch S3Proxy's jar-with-dependencies from Maven Central once; return its path."""
    return fetch_jar(
        f"org.gaul:s3proxy:{version}:jar:jar-with-dependencies", jar_path(version), what="S3Proxy"
    )


def credentials(layout: S3ProxyLayout) -> tuple[str, str]:
    """(access key, secret key) of this S3Proxy, generated on first use (file mode 0600)."""
    path = layout.credentials_file
    if not path.exists():
        layout.home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(f"defectloop-{secrets.token_hex(4)}\n{secrets.token_hex(20)}\n")
    access, secret = path.read_text().split()
    return access, secret


def client_env(layout: S3ProxyLayout) -> dict[str, str]:
    """What a service needs in its environment to use this S3 server (``s3://`` blob URLs)."""
    access, secret = credentials(layout)
    return {
        "DEFECTLOOP_S3_ENDPOINT": layout.endpoint,
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_DEFAULT_REGION": REGION,
    }


def client(layout: S3ProxyLayout) -> Any:
    """A boto3 S3 client on this server (path-style: the endpoint is an IP address)."""
    from defectloop.common.blobstore import s3_client

    access, secret = credentials(layout)
    return s3_client(layout.endpoint, access_key=access, secret_key=secret)


def write_config(layout: S3ProxyLayout) -> None:
    access, secret = credentials(layout)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    props = {
        "s3proxy.endpoint": layout.endpoint,
        "s3proxy.authorization": "aws-v2-or-v4",
        "s3proxy.identity": access,
        "s3proxy.credential": secret,
        "jclouds.provider": "filesystem",
        "jclouds.filesystem.basedir": str(layout.data_dir),
    }
    layout.config.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


def is_running(layout: S3ProxyLayout) -> bool:
    return pid_from_file(layout.pid_file) is not None and port_open(layout.port)


def start(layout: S3ProxyLayout, *, timeout_s: float = 60.0) -> bool:
    """Start S3Proxy unless it runs; return True if this call started it. Returns once it
    accepts connections."""
    if is_running(layout):
        return False
    if port_open(layout.port):
        raise ComponentError(
            f"port {layout.port} is taken by another process",
            hint="stop it, or set DEFECTLOOP_S3PROXY_PORT to another port",
        )
    java = shutil.which("java")
    if java is None:
        raise ComponentError(
            "Java 17+ is needed to run S3Proxy", hint="apt-get install -y openjdk-17-jre-headless"
        )
    jar = ensure_jar()
    write_config(layout)
    start_daemon(
        [java, "-Xmx256m", "-jar", str(jar), "--properties", str(layout.config)],
        name="S3Proxy",
        port=layout.port,
        pid_file=layout.pid_file,
        log_file=layout.log_file,
        timeout_s=timeout_s,
    )
    return True


def stop(layout: S3ProxyLayout, *, timeout_s: float = 30.0) -> bool:
    """Stop S3Proxy by its pid (SIGTERM; SIGKILL after ``timeout_s``)."""
    return stop_by_pid_file(layout.pid_file, timeout_s=timeout_s)
