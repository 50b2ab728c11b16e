"""Each service builds from its settings, connects to the real broker and reports healthy."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from defectloop.testing.net import wait_until

SERVICES = {
    "ingest": "IngestSettings",
    "inference": "InferenceSettings",
    "annotation_sync": "AnnotationSyncSettings",
    "monitor": "MonitorSettings",
    "trainer": "TrainerSettings",
}


@pytest.mark.integration
@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_service_reports_healthy_on_the_real_broker(
    service: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    main = importlib.import_module(f"defectloop.{service}.main")
    settings_cls = getattr(
        importlib.import_module(f"defectloop.{service}.settings"), SERVICES[service]
    )
    settings = settings_cls(
        kafka_bootstrap=kafka_bootstrap, database_url=f"sqlite:///{tmp_path}/db.sqlite"
    )
    app = main.build_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:

            async def healthy() -> dict[str, Any] | None:
                # Services may connect to Kafka in the background: "degraded" (503) until then.
                resp = await client.get("/health")
                return resp.json() if resp.status_code == 200 else None

            body = await wait_until(healthy, timeout_s=60, what=f"{service} to report healthy")
    assert body["kafka"] is True


@pytest.mark.unit
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_importing_a_service_builds_nothing(service: str) -> None:
    # build_app(settings) is the only place a broker is created; importing must not connect.
    code = (
        f"import defectloop.{service}.main as m; "
        "import faststream.kafka as fk; "
        "assert not any(isinstance(v, fk.KafkaBroker) for v in vars(m).values())"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.unit
def test_inference_imports_no_torch() -> None:
    code = (
        "import sys, defectloop.inference.main; assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
