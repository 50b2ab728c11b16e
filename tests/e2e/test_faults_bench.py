"""`defectloop bench faults --quick` (issue 12 §3), and its checker on made-up outcomes.

The e2e test runs the CLI as a user would (its own broker, ingest and inference processes, a
tiny model) under the quick schedule: inference ``kill -9``, the broker ``kill -9`` and started
again, ingest restarted, while gateways post 100 images; the checker's verdict must be a pass.
The unit tests show the checker can fail: a lost image, a second champion decision, a stray
dead letter and a lag are each reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from defectloop.cli.faults import Fault, FaultOutcome
from defectloop.cli.faults_check import judge
from defectloop.common.errors import InvalidInputError
from defectloop.common.events import DeadLetter, PredictionMade, prediction_id_for

POISON = "faultbench/poison"


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_fault_schedule_loses_nothing_and_doubles_no_decision(tmp_path: Path) -> None:
    from defectloop.testing.bundles import BundleBuilder

    bundle = BundleBuilder(tmp_path)("v1").path
    report = tmp_path / "faults.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "defectloop.cli",
            "bench",
            "faults",
            "--quick",
            "--bundle",
            str(bundle),
            "--workdir",
            str(tmp_path / "run"),
            "--report",
            str(report),
        ],
        env={**os.environ, "DEFECTLOOP_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert report.is_file(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(report.read_text())
    print(report.with_suffix(".md").read_text())
    assert result["passed"], result["failures"]
    assert done.returncode == 0
    summary = result["summary"]
    assert summary["acknowledged"] == summary["offered"] == 100
    assert summary["lost"] == 0
    assert summary["duplicates_after_dedupe"] == 0
    assert [f["fault"] for f in result["faults"]] == [
        "inference:kill:4",
        "kafka:restart:9",
        "ingest:restart:15",
    ]
    assert all(f["recovery_s"] is not None for f in result["faults"])


@dataclass
class Offer:
    status: int | None
    image_id: str | None
    acked_at_s: float | None


def champion(image_id: str, version: str) -> PredictionMade:
    now = datetime.now(UTC)
    return PredictionMade(
        site_id="s",
        camera_id="cam-1",
        prediction_id=prediction_id_for(image_id, version, "champion"),
        image_id=image_id,
        sha256="ab" * 32,
        blob_uri="file:///x.png",
        width=8,
        height=8,
        boxes=(),
        defective=False,
        decision_score=0.0,
        decision_threshold=0.5,
        model_name="m",
        model_version=version,
        outlier_score=0.0,
        outlier=False,
        captured_at=now,
        queue_latency_ms=0.0,
        inference_latency_ms=0.0,
    )


def letter(key: str) -> DeadLetter:
    return DeadLetter(
        source_topic="image.captured",
        key=key,
        reason="schema_violation",
        error="x",
        service="inference",
        original_value_b64="",
    )


@pytest.mark.unit
def test_the_checker_passes_redeliveries_and_fails_loss_doubles_stray_letters_and_lag() -> None:
    offers = [Offer(202, "i1", 1.0), Offer(202, "i2", 5.0), Offer(None, None, None)]
    faults = [FaultOutcome("inference:kill:2", 2.0)]
    # i1 delivered twice by the same model (a redelivery): one decision, not a duplicate.
    clean = judge(
        offers[:2],
        [champion("i1", "v1"), champion("i1", "v1"), champion("i2", "v1")],
        [letter(POISON)],
        poison_key=POISON,
        faults=faults,
        lag=0,
    )
    assert clean["passed"], clean["failures"]
    assert clean["summary"]["raw_redeliveries"] == 1

    # A prediction carrying another decision id for i1 (an MES deduping on it would act twice),
    # i2 lost, an unanswered offer, a stray dead letter and a lag.
    doubled = champion("i1", "v2").model_copy(update={"decision_id": "other"})
    bad = judge(
        offers,
        [champion("i1", "v1"), doubled],
        [letter(POISON), letter("s/cam-1")],
        poison_key=POISON,
        faults=faults,
        lag=3,
    )
    assert not bad["passed"]
    s = bad["summary"]
    assert (s["lost"], s["duplicates_after_dedupe"], s["unanswered"], s["lag_after"]) == (
        1,
        1,
        1,
        3,
    )
    assert s["dlq"] == {"poison": 1, "other": {"image.captured:schema_violation": 1}}
    assert (faults[0].lost, faults[0].duplicates) == (1, 0)  # i2 was acknowledged after it
    assert len(bad["failures"]) == 5


@pytest.mark.unit
def test_a_fault_is_parsed_or_refused_with_a_hint() -> None:
    assert str(Fault.parse("inference:kill:20")) == "inference:kill:20"
    assert Fault.parse("kafka:restart:2.5").at_s == 2.5
    for bad in ("inference:kill", "monitor:kill:3", "inference:pause:3", "ingest:kill:soon"):
        with pytest.raises(InvalidInputError) as caught:
            Fault.parse(bad)
        assert caught.value.hint
