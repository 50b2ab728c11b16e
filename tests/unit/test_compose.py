"""compose.yaml is the production topology; there is no Docker engine here, so check its wiring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "inference", "annotation-sync", "monitor", "trainer")
INFRA = ("kafka", "postgres", "minio", "label-studio", "mlflow", "otel-collector", "jaeger")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return data


def test_every_component_of_the_topology_is_there(compose: dict[str, Any]) -> None:
    assert set(SERVICES) | set(INFRA) <= set(compose["services"])


def test_kafka_runs_in_kraft_mode_from_the_apache_image(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


@pytest.mark.parametrize("service", SERVICES)
def test_build_context_and_dockerfile_exist(compose: dict[str, Any], service: str) -> None:
    build = compose["services"][service]["build"]
    context = ROOT / build["context"]
    assert context.is_dir()
    assert (context / build["dockerfile"]).is_file()


@pytest.mark.parametrize("service", SERVICES)
def test_service_gets_its_kafka_and_database_settings(
    compose: dict[str, Any], service: str
) -> None:
    env = compose["services"][service]["environment"]
    prefix = "DEFECTLOOP_" + service.upper().replace("-", "_") + "_"
    assert env["DEFECTLOOP_KAFKA_BOOTSTRAP"] == "kafka:19092"
    assert env[prefix + "DATABASE_URL"].startswith("postgresql+psycopg://")
    schema = service.replace("-", "_")
    assert f"search_path%3D{schema}" in env[prefix + "DATABASE_URL"]
    assert env["DEFECTLOOP_BLOB_URL"].startswith("s3://")


@pytest.mark.parametrize("service", SERVICES)
def test_service_waits_for_healthy_dependencies_and_is_health_checked(
    compose: dict[str, Any], service: str
) -> None:
    spec = compose["services"][service]
    depends = spec["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["kafka-init"]["condition"] == "service_completed_successfully"
    assert "/health" in " ".join(spec["healthcheck"]["test"])


def test_every_health_checked_dependency_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for dep, cond in (
            (spec.get("depends_on") or {}).items()
            if isinstance(spec.get("depends_on"), dict)
            else []
        ):
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in compose["services"][dep], f"{name} waits on {dep}"


def test_mounted_config_files_exist(compose: dict[str, Any]) -> None:
    for spec in compose["services"].values():
        for volume in spec.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_inference_and_workers_publish_no_fixed_host_port_so_they_scale(
    compose: dict[str, Any],
) -> None:
    for service in ("inference", "annotation-sync", "trainer"):
        assert "ports" not in compose["services"][service]
