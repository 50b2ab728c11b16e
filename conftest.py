"""Fixtures shared by every test directory: a real Kafka broker for integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from defectloop.testing.net import free_port

if TYPE_CHECKING:
    from sqlalchemy import Engine


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real single-node Kafka for this test session (or ``KAFKA_BOOTSTRAP`` when set)."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    from defectloop.cli import kafka_local

    home: Path = tmp_path_factory.mktemp("kafka")
    port = free_port()
    layout = kafka_local.KafkaLayout(home, port=port, controller_port=free_port())
    kafka_local.start(layout, partitions=3)
    try:
        yield layout.bootstrap
    finally:
        kafka_local.stop(layout)


@pytest.fixture
def unique_group(request: pytest.FixtureRequest) -> str:
    """A consumer group of its own for each test, so tests never steal each other's messages."""
    return f"test-{request.node.name}-{os.getpid()}-{id(request)}"


def _pg_bin(name: str) -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return found[-1] if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real throw-away PostgreSQL server (or ``POSTGRES_URL`` when set), with schema ``svc``."""
    import shutil
    import subprocess

    external = os.environ.get("POSTGRES_URL")
    if external:
        yield external
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.fail("PostgreSQL binaries not found: run `make setup` (it installs them)")
    import tempfile

    # Not under pytest's tmp dir: that one is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="defectloop-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    # PostgreSQL refuses to run as root: run it as the `postgres` system user when we are root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if prefix:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
        base.chmod(0o755)
    port = free_port()
    run = lambda *cmd: subprocess.run([*prefix, *map(str, cmd)], check=True, capture_output=True)  # noqa: E731
    run(initdb, "-D", data, "-U", "defectloop", "--auth=trust", "-E", "UTF8")
    run(
        pg_ctl,
        "-D",
        data,
        "-w",
        "-l",
        base / "pg.log",
        "-o",
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1",
        "start",
    )
    try:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={port} user=defectloop dbname=postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS svc")
        yield f"postgresql+psycopg://defectloop@127.0.0.1:{port}/postgres?options=-csearch_path%3Dsvc"
    finally:
        run(pg_ctl, "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_schema_engine(postgres_url: str) -> Iterator[Engine]:
    """An engine (``defectloop.common.db``) on a fresh schema of its own, dropped after, as
    compose gives each service; its sessions run in a non-UTC time zone, so a timestamp kept in
    local time instead of UTC shows."""
    import uuid

    from sqlalchemy import create_engine, make_url, text

    from defectloop.common.db import make_engine

    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(postgres_url).update_query_dict(
        {"options": f"-csearch_path={schema} -ctimezone=Asia/Kolkata"}
    )
    engine = make_engine(url.render_as_string(hide_password=False), create_tables=False)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW timezone")).scalar() == "Asia/Kolkata"
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
