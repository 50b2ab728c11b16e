"""A real PostgreSQL on 127.0.0.1 for the production profile, from Debian's server binaries.

One cluster under the state home (``<state>/postgres/data``), one database ``defectloop`` and one
schema per service (``ingest``, ``inference``, ``annotation_sync``, ``monitor``, ``trainer``),
the layout compose.yaml gives the services: each service's URL sets its ``search_path``, so its
tables land in its own schema and no service sees another's. Trust authentication on 127.0.0.1
only (a local development server; compose sets a password). PostgreSQL refuses to run as root:
as root, the cluster is owned by and run as the ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from defectloop.cli.processes import alive, port_open
from defectloop.common.errors import ComponentError
from defectloop.common.paths import state_home

DATABASE = "defectloop"
USER = "defectloop"


def schema_for(service: str) -> str:
    """The schema of a service's tables (``annotation-sync`` -> ``annotation_sync``)."""
    return service.replace("-", "_")


@dataclass(frozen=True)
class PostgresLayout:
    """Where one local PostgreSQL keeps its cluster, and its port."""

    home: Path
    port: int = 5432

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def log_file(self) -> Path:
        return self.home / "postgres.log"

    @property
    def pid_file(self) -> Path:
        """PostgreSQL's own ``postmaster.pid`` (the pid is its first line)."""
        return self.data_dir / "postmaster.pid"

    def url(self, service: str) -> str:
        """The SQLAlchemy URL of ``service``'s schema (the form compose.yaml uses)."""
        return (
            f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{DATABASE}"
            f"?options=-csearch_path%3D{schema_for(service)}"
        )


def default_layout() -> PostgresLayout:
    return PostgresLayout(
        state_home() / "postgres", port=int(os.environ.get("DEFECTLOOP_POSTGRES_PORT", "5432"))
    )


def _binary(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    path = str(found[-1]) if found else shutil.which(name)
    if path is None:
        raise ComponentError(
            f"PostgreSQL's {name} was not found",
            hint="install Debian's server: apt-get install -y postgresql (or run `make setup`)",
        )
    return path


def _as_server_user() -> list[str]:
    # initdb and postgres refuse root: run them as Debian's `postgres` system user instead.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run([*_as_server_user(), *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ComponentError(
            f"{what} failed: {(proc.stderr or proc.stdout).strip()[-400:]}",
            hint="see the PostgreSQL log under the state directory's postgres/",
        )


def read_pid(layout: PostgresLayout) -> int | None:
    """The postmaster's pid if it runs."""
    try:
        pid = int(layout.pid_file.read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pid if alive(pid) else None


def is_running(layout: PostgresLayout) -> bool:
    return read_pid(layout) is not None and port_open(layout.port)


def _init_cluster(layout: PostgresLayout) -> None:
    if (layout.data_dir / "PG_VERSION").exists():
        return
    layout.home.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(layout.home, "postgres")
        probe = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-w", str(layout.home)], check=False
        )
        if probe.returncode != 0:
            raise ComponentError(
                f"the postgres system user cannot reach {layout.home}",
                hint="make the state directory's parents traversable (chmod o+x) or set "
                "DEFECTLOOP_HOME to a directory outside /root",
            )
    _run(
        [_binary("initdb"), "-D", str(layout.data_dir), "-U", USER, "--auth=trust", "-E", "UTF8"],
        "initdb",
    )


def start(layout: PostgresLayout) -> bool:
    """Start the server unless it runs, with the database and each service's schema; return
    True if this call started it."""
    started = False
    if not is_running(layout):
        if port_open(layout.port):
            raise ComponentError(
                f"port {layout.port} is taken by another process",
                hint="stop it, or set DEFECTLOOP_POSTGRES_PORT to another port",
            )
        _init_cluster(layout)
        layout.log_file.touch()
        if os.geteuid() == 0:
            shutil.chown(layout.log_file, "postgres")
        # TCP on 127.0.0.1 only, no Unix socket (its path would be limited to 107 bytes).
        options = f"-p {layout.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories="
        _run(
            [
                *(_binary("pg_ctl"), "-D", str(layout.data_dir), "-w", "-t", "60"),
                *("-l", str(layout.log_file), "-o", options, "start"),
            ],
            "starting PostgreSQL",
        )
        started = True
    ensure_schemas(layout)
    return started


def ensure_schemas(
    layout: PostgresLayout,
    services: tuple[str, ...] = ("ingest", "inference", "annotation-sync", "monitor", "trainer"),
) -> None:
    """The ``defectloop`` database and one schema per service (idempotent), with Debian's
    ``psql`` (the CLI needs no PostgreSQL driver of its own)."""

    def psql(dbname: str, sql: str) -> str:
        base = ["-h", "127.0.0.1", "-p", str(layout.port), "-U", USER, "-d", dbname]
        proc = subprocess.run(
            [_binary("psql"), *base, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ComponentError(
                f"PostgreSQL refused {sql!r}: {proc.stderr.strip()[-300:]}",
                hint=f"see {layout.log_file}",
            )
        return proc.stdout.strip()

    if not psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"):
        psql("postgres", f'CREATE DATABASE "{DATABASE}"')
    schemas = "; ".join(f'CREATE SCHEMA IF NOT EXISTS "{schema_for(s)}"' for s in services)
    psql(DATABASE, schemas)


def stop(layout: PostgresLayout, *, timeout_s: float = 30.0) -> bool:
    """Stop the server by its pid (SIGINT: PostgreSQL's fast shutdown; SIGKILL after
    ``timeout_s``). False when it was not running."""
    pid = read_pid(layout)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)  # waiting for a process to exit
    return True
