"""`defectloop monitor status` against a real monitor HTTP API (its routes over a real store)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI

from defectloop.common.db import make_engine
from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    Box,
    ModelDeployed,
    ModelRole,
    PredictionMade,
    prediction_id_for,
)
from defectloop.common.http_errors import install_error_handlers
from defectloop.monitor import api
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore
from defectloop.testing.http import serve_in_thread
from defectloop.testing.net import free_port

pytestmark = pytest.mark.unit

SITE = "clisite"
T0 = datetime.now(UTC) - timedelta(hours=1)


def _events() -> list[object]:
    out: list[object] = [
        ModelDeployed(
            site_id=SITE,
            role=ModelRole.CHAMPION,
            model_name="detector",
            model_version="v7",
            artifact_uri="file:///b/v7",
            sha256="0" * 64,
            baseline_metrics={"recall": 0.9},
            occurred_at=T0 - timedelta(minutes=1),
        )
    ]
    for i in range(40):
        defective = i % 2 == 0
        image_id = f"img-{i}"
        out.append(
            PredictionMade(
                site_id=SITE,
                camera_id="cam-1",
                prediction_id=prediction_id_for(image_id, "v7", "champion"),
                image_id=image_id,
                sha256="0" * 64,
                blob_uri="file:///x.png",
                width=64,
                height=64,
                boxes=(),
                defective=defective and i % 10 != 0,
                decision_score=0.9 if defective else 0.1,
                decision_threshold=0.5,
                model_name="detector",
                model_version="v7",
                outlier_score=0.0,
                outlier=False,
                captured_at=T0 + timedelta(seconds=i),
                queue_latency_ms=1,
                inference_latency_ms=1,
            )
        )
        out.append(
            AnnotationCompleted(
                site_id=SITE,
                camera_id="cam-1",
                image_id=image_id,
                annotation_id=f"a-{i}",
                annotator="ann",
                status=AnnotationStatus.COMPLETED,
                boxes=(Box(label="scratch", x=1, y=1, w=5, h=5),) if defective else (),
                sampling_reason="random",
                lead_time_s=1,
                occurred_at=T0 + timedelta(seconds=i + 30),
            )
        )
    return out


@pytest.fixture(scope="module")
def monitor_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = MonitorStore(make_engine(f"sqlite:///{tmp_path_factory.mktemp('mon') / 'm.db'}"))
    store.record_many(_events())  # type: ignore[arg-type]
    app = FastAPI()
    install_error_handlers(app)  # what every service's app shell answers errors with
    api.install(app, store, MonitorSettings(database_url="sqlite://"))
    with serve_in_thread(app) as url:
        yield url


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "defectloop.cli", *args],
        env={**os.environ, "DEFECTLOOP_HOME": str(tmp_path), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_status_shows_each_site_with_its_model_and_figures(
    tmp_path: Path, monitor_url: str
) -> None:
    result = _run(tmp_path, "monitor", "status", "--url", monitor_url)

    assert result.returncode == 0, result.stderr
    assert SITE in result.stdout
    assert "champion v7" in result.stdout
    assert "n=20" in result.stdout  # recall over the 20 defective labelled images
    assert "40 (+0 skipped)" in result.stdout


def test_unknown_site_is_one_line_with_a_hint(tmp_path: Path, monitor_url: str) -> None:
    result = _run(tmp_path, "monitor", "status", "--url", monitor_url, "--site", "nosuch")

    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error:")
    assert "nosuch" in lines[0]
    assert lines[1].startswith("hint:")


def test_unreachable_monitor_is_one_line_with_a_hint(tmp_path: Path) -> None:
    result = _run(tmp_path, "monitor", "status", "--url", f"http://127.0.0.1:{free_port()}")

    assert result.returncode == 1
    assert result.stderr.startswith("error: the monitor at")
    assert "Traceback" not in result.stderr
