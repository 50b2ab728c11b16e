"""`defectloop demo`'s scenario: drift specs, the live view's states, the report's Markdown."""

from __future__ import annotations

import subprocess
import sys

import pytest

from defectloop.cli.closed_loop import (
    DEFAULT_DRIFTS,
    DemoConfig,
    DemoDrift,
    SiteTrack,
    parse_demo_drift,
    site_status,
)
from defectloop.common.errors import InvalidInputError

SITES = ("A", "B", "C")


@pytest.mark.unit
def test_a_drift_spec_names_site_camera_kind_start_and_severity() -> None:
    assert parse_demo_drift("C/cam-2:blur:30:0.8", SITES) == DemoDrift(
        "C", "blur", 30.0, 0.8, "cam-2"
    )
    assert parse_demo_drift("B:lighting::1.0", SITES) == DemoDrift("B", "lighting", 0.0, 1.0)


@pytest.mark.unit
@pytest.mark.parametrize(
    "spec", ["B", "B:", "Z:lighting", "B:sunburn", "B:lighting:soon", "B:lighting:-5", "B:blur::2"]
)
def test_a_bad_drift_spec_is_refused_with_a_hint(spec: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_demo_drift(spec, SITES)
    assert caught.value.hint


@pytest.mark.unit
def test_the_default_scenario_drifts_b_and_one_camera_of_c() -> None:
    config = DemoConfig.quick().with_drifts(None)
    assert [d.spec for d in config.drifts] == [
        parse_demo_drift(s, SITES).spec for s in DEFAULT_DRIFTS
    ]
    assert {d.site for d in config.drifts} == {"B", "C"}
    # Drifts start after the baseline, counted in frames of each camera.
    assert config.start_index(config.drifts[0]) == round(config.baseline_s * config.camera_rate)


@pytest.mark.unit
def test_a_drift_on_an_unknown_camera_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="cam-9"):
        DemoConfig.quick().with_drifts(["C/cam-9:blur"])


@pytest.mark.unit
def test_the_demo_cli_refuses_a_bad_drift_in_one_line_before_starting_anything() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "defectloop.cli", "demo", "--quick", "--drift", "B:sunburn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("error:")
    assert "sunburn" in lines[0]
    assert lines[1].startswith("hint:")


@pytest.mark.unit
def test_a_waiting_job_shows_its_label_progress() -> None:
    track = SiteTrack("B", (DemoDrift("B", "lighting", 0.0, 1.0),))
    track.observe_jobs(
        [
            {
                "job_id": "j1",
                "state": "waiting_for_labels",
                "fresh_labels": 12,
                "fresh_defective": 4,
                "updated_at": "2026-01-01T00:00:00+00:00",
            }
        ]
    )
    assert site_status(track, (80, 25)) == (
        "waiting for labels",
        "12/80 fresh, 4/25 defective",
    )
    assert [e["kind"] for e in track.events] == ["job.waiting_for_labels"]


@pytest.mark.unit
def test_a_data_quality_incident_shows_as_an_alert_without_retraining() -> None:
    track = SiteTrack("C", (DemoDrift("C", "blur", 0.0, 0.8, "cam-2"),), drift_at=0.0)
    track.observe_incidents(
        [
            {
                "incident_id": "i1",
                "kind": "data_quality",
                "metric": "sharpness",
                "camera_id": "cam-2",
                "open": True,
                "opened_at": "2026-01-01T00:01:00+00:00",
                "closed_at": None,
                "degraded": {"value": 10.0, "baseline": 100.0},
            }
        ]
    )
    track.observe_jobs(
        [
            {
                "job_id": "j2",
                "state": "ignored",
                "reason": "data_quality never retrains",
                "updated_at": "2026-01-01T00:01:01+00:00",
            }
        ]
    )
    state, progress = site_status(track, (80, 25))
    assert state == "data-quality alert"
    assert "cam-2" in progress
    assert track.finished()
    assert track.detected_at is not None
    assert not track.retrained
