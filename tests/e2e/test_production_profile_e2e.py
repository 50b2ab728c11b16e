"""`defectloop up --profile production` for real: PostgreSQL, S3 (S3Proxy) and the secured bus.

The stack starts on free ports in a state directory of its own (beside any running stack), the
simulator posts a few seconds of frames, and the checks read the stores themselves: images and
the bootstrap bundle in the S3 bucket, each service's tables in its PostgreSQL schema, the
deployed ``artifact_uri`` an ``s3://`` URI, predictions recorded by the monitor (so published on
the bus); then ``down`` stops every process by its pid.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from defectloop.cli import kafka_local, postgres_local, s3proxy_local, stack, supervisor
from defectloop.cli.demo_driver import _seed_label_studio
from defectloop.cli.processes import alive, pid_from_file
from defectloop.testing.net import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SITE = "A"


@pytest.fixture
def production_home() -> Iterator[Path]:
    """A state home on free ports; the environment this test changed is restored after."""
    # Not under pytest's tmp dir: that one is private to root, and PostgreSQL runs as `postgres`.
    home = Path(tempfile.mkdtemp(prefix="defectloop-prod-"))
    home.chmod(0o755)
    kafka_port = free_port()
    saved = dict(os.environ)
    os.environ.update(
        {
            "DEFECTLOOP_HOME": str(home),
            "DEFECTLOOP_KAFKA_PORT": str(kafka_port),
            "DEFECTLOOP_LABELSTUDIO_PORT": str(free_port()),
            "DEFECTLOOP_ZIPKIN_PORT": str(free_port()),
            "DEFECTLOOP_POSTGRES_PORT": str(free_port()),
            "DEFECTLOOP_S3PROXY_PORT": str(free_port()),
            "DEFECTLOOP_KAFKA_SITES": SITE,
        }
    )
    try:
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(home, ignore_errors=True)


def _rows(layout: postgres_local.PostgresLayout, sql: str) -> list[tuple[Any, ...]]:
    conninfo = f"host=127.0.0.1 port={layout.port} user={postgres_local.USER} dbname=defectloop"
    with psycopg.connect(conninfo) as conn:
        return list(conn.execute(sql).fetchall())


def test_up_production_simulate_down(production_home: Path) -> None:
    specs = supervisor.stack_services({s.name: free_port() for s in supervisor.SERVICES})
    ports = {s.name: s.port for s in specs}
    _seed_label_studio(production_home)  # a migrated Label Studio: no 2-minute first start
    postgres = postgres_local.default_layout()
    s3 = s3proxy_local.default_layout()
    kafka = kafka_local.default_layout()
    pids: dict[str, int | None] = {}
    try:
        stack.stack_up([SITE], services=specs, profile="production")
        pids = {
            "postgres": postgres_local.read_pid(postgres),
            "s3proxy": pid_from_file(s3.pid_file),
            "kafka": kafka_local.read_pid(kafka),
            **{s.name: supervisor.service_pid(s) for s in specs},
        }
        assert all(pids.values()), pids
        assert kafka_local.default_layout().secured
        simulate = subprocess.run(
            [
                *(sys.executable, "-m", "defectloop.cli", "simulate", "run", "--sites", SITE),
                *("--duration", "8", "--rate", "2", "--annotators", "0"),
                *("--ingest-url", f"http://127.0.0.1:{ports['ingest']}"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert simulate.returncode == 0, simulate.stdout[-2000:] + simulate.stderr[-2000:]

        # Predictions published on the secured bus and recorded by the monitor, in PostgreSQL.
        async def predictions() -> int | None:
            count = _rows(postgres, "SELECT count(*) FROM monitor.monitor_prediction")[0][0]
            return int(str(count)) or None

        asyncio.run(
            wait_until(
                predictions,
                timeout_s=90,
                what="the monitor records the predictions in PostgreSQL",
            )
        )
        images = _rows(postgres, "SELECT blob_uri FROM ingest.ingest_image")
        assert images
        assert all(str(uri).startswith("s3://defectloop/blobs/") for (uri,) in images)
        deployed = _rows(postgres, "SELECT artifact_uri FROM trainer.trainer_deployed")
        assert deployed
        assert all(str(uri).startswith("s3://defectloop/blobs/bundles/") for (uri,) in deployed)
        assert _rows(postgres, "SELECT count(*) FROM trainer.model_versions")[0][0] >= 1
        # Every service made its tables in its own schema, none in public.
        tables = _rows(
            postgres,
            "SELECT table_schema, count(*) FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') GROUP BY 1",
        )
        schemas = {str(schema) for schema, _ in tables}
        assert {"ingest", "annotation_sync", "monitor", "trainer"} <= schemas
        assert "public" not in schemas
        # Made by Alembic before the services started (each schema has its version table).
        migrated = _rows(
            postgres,
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name = 'alembic_version'",
        )
        assert {schema for (schema,) in migrated} == {
            "ingest",
            "annotation_sync",
            "monitor",
            "trainer",
        }

        # The bucket holds the images and the bundle inference loaded.
        keys = [
            o["Key"]
            for page in s3proxy_local.client(s3)
            .get_paginator("list_objects_v2")
            .paginate(Bucket=stack.BUCKET)
            for o in page.get("Contents", [])
        ]
        assert any(k.endswith(".png") for k in keys)
        assert any(k.startswith("blobs/bundles/") and k.endswith("/model.onnx") for k in keys)
        assert any(k.startswith("blobs/bundles/") and k.endswith("/model.json") for k in keys)
    finally:
        stack.stack_down(specs)
    assert not [name for name, pid in pids.items() if pid is not None and alive(pid)]
