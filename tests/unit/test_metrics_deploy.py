"""The production metrics wiring: Prometheus scrapes every service, Grafana's provisioned
dashboard reads only metrics the services export, and shows every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from defectloop.common.metrics import REGISTRY

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "inference", "annotation-sync", "monitor", "trainer")


def _yaml(path: str) -> Any:
    return yaml.safe_load((ROOT / path).read_text())


def _exported() -> set[str]:
    return {m.name for m in REGISTRY.collect()}


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/defectloop.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"defectloop_[a-z_]+", target["expr"]):
                names.add(re.sub(r"_(total|bucket|sum|count)$", "", name))
    return names


def test_the_dashboard_reads_only_exported_metrics_and_shows_them_all() -> None:
    assert _dashboard_metrics() == _exported()


@pytest.mark.parametrize("service", SERVICES)
def test_prometheus_scrapes_every_replica_of_each_service_on_its_port(service: str) -> None:
    compose = _yaml("compose.yaml")
    env = compose["services"][service]["environment"]
    port = int(env["DEFECTLOOP_" + service.upper().replace("-", "_") + "_PORT"])
    jobs = {job["job_name"]: job for job in _yaml("deploy/prometheus.yml")["scrape_configs"]}
    (sd,) = jobs[service]["dns_sd_configs"]
    assert (sd["names"], sd["type"], sd["port"]) == ([service], "A", port)


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    compose = _yaml("compose.yaml")
    mounts = [v.split(":")[0] for v in compose["services"]["grafana"]["volumes"]]
    for mount in mounts:
        assert (ROOT / mount).is_dir(), mount
    (source,) = _yaml("deploy/grafana/provisioning/datasources/prometheus.yaml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
