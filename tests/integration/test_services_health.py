"""Each service builds from its settings, connects to the real broker and reports healthy."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

SERVICES = {
    "ingest": "IngestSettings",
    "inference": "InferenceSettings",
    "annotation_sync": "AnnotationSyncSettings",
    "monitor": "MonitorSettings",
    "trainer": "TrainerSettings",
}


@pytest.mark.integration
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_reports_healthy_on_the_real_broker(
    service: str, kafka_bootstrap: str, tmp_path: object
) -> None:
    main = importlib.import_module(f"defectloop.{service}.main")
    settings_cls = getattr(
        importlib.import_module(f"defectloop.{service}.settings"), SERVICES[service]
    )
    settings = settings_cls(
        kafka_bootstrap=kafka_bootstrap, database_url=f"sqlite:///{tmp_path}/db.sqlite"
    )
    with TestClient(main.build_app(settings)) as client:
        # Services connect to Kafka in the background and say "degraded" (503) until then.
        deadline = time.monotonic() + 60
        resp = client.get("/health")
        while resp.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)  # readiness polling with a deadline
            resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.json()["kafka"] is True


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
