"""`defectloop bench faults --quick` (issue 12 §3), and its checker on made-up outcomes.

The e2e test runs the CLI as a user would (its own broker, ingest and inference processes, a
tiny model) under the quick schedule: inference ``kill -9``, the broker ``kill -9`` and started
again, ingest restarted, while gateways post 100 images; the checker's verdict must be a pass.
A second e2e test runs the faults that need more parts (annotation-sync and a Label Studio):
a frozen inference, a second inference instance joining, annotation-sync ``kill -9``, Label
Studio down. The unit tests show the checker can fail: a lost image, a second champion decision,
a stray dead letter, a lag, and an annotation sample unpushed, missing or pushed twice are each
reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from defectloop.cli.faults import Fault, FaultOutcome
from defectloop.cli.faults_check import judge, judge_annotation, judge_monitor, judge_trainer
from defectloop.common.errors import InvalidInputError
from defectloop.common.events import DeadLetter, PredictionMade, prediction_id_for

POISON = "faultbench/poison"


def run_bench(tmp_path: Path, *args: str) -> dict[str, Any]:
    """``defectloop bench faults`` as a user runs it (a tiny model); its JSON report."""
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
            *args,
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
    result: dict[str, Any] = json.loads(report.read_text())
    print(report.with_suffix(".md").read_text())
    assert result["passed"], result["failures"]
    assert done.returncode == 0
    assert result["summary"]["lost"] == 0
    assert result["summary"]["duplicates_after_dedupe"] == 0
    assert all(f["recovery_s"] is not None for f in result["faults"])
    return result


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_fault_schedule_loses_nothing_and_doubles_no_decision(tmp_path: Path) -> None:
    result = run_bench(tmp_path, "--quick")
    summary = result["summary"]
    assert summary["acknowledged"] == summary["offered"] == 100
    assert [f["fault"] for f in result["faults"]] == [
        "inference:kill:4",
        "kafka:restart:9",
        "ingest:restart:15",
    ]


FREEZE_SCALE_ANNOTATION = (
    "annotation-sync:kill:5",
    "inference:stop:20:12",
    "inference:scale:32",
    "labelstudio:down:40:10",
)


@pytest.mark.e2e
@pytest.mark.slow
def test_freeze_scale_out_and_annotation_faults_lose_nothing_and_push_each_sample_once(
    tmp_path: Path,
) -> None:
    """annotation-sync ``kill -9``, inference frozen (SIGSTOP 12 s, past its group's session
    timeout, then SIGCONT), a second inference instance joining, Label Studio down 10 s; while
    gateways post 120 images over 60 s. Besides the quick run's checks: every image
    annotation-sync sampled is exactly one Label Studio task."""
    args = ["--images", "120", "--duration", "60"]
    for fault in FREEZE_SCALE_ANNOTATION:
        args += ["--fault", fault]
    result = run_bench(tmp_path, *args)
    assert [f["fault"] for f in result["faults"]] == list(FREEZE_SCALE_ANNOTATION)
    annotation = result["summary"]["annotation"]
    assert annotation["samples"] > 0
    assert annotation["tasks"] == annotation["samples"]
    assert (annotation["duplicated"], annotation["missing"], annotation["unpushed"]) == (0, 0, 0)
    assert set(result["peak_rss_mib"]) == {"ingest", "inference", "inference-2", "annotation-sync"}


MONITOR_TRAINER = ("inference:kill:4", "monitor:kill:8", "trainer:kill:14")


@pytest.mark.e2e
@pytest.mark.slow
def test_monitor_and_trainer_kills_lose_or_double_nothing_in_the_monitor(tmp_path: Path) -> None:
    """The monitor and the trainer run too, each ``kill -9``-ed once (inference too, for
    redeliveries) while gateways post 100 images over 30 s: the monitor stores one champion
    prediction per decision on the topic, the trainer no incident twice."""
    args = ["--images", "100", "--duration", "30"]
    for fault in MONITOR_TRAINER:
        args += ["--fault", fault]
    result = run_bench(tmp_path, *args)
    assert [f["fault"] for f in result["faults"]] == list(MONITOR_TRAINER)
    monitor = result["summary"]["monitor"]
    assert monitor["champion_predictions"] == monitor["unique_decisions"] == 100
    assert monitor["lag_after"] == 0
    assert result["summary"]["trainer"]["lag_after"] == 0
    assert {"monitor", "trainer"} <= set(result["peak_rss_mib"])


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
    assert faults[0].ack_gap_s == 3.0  # no 202 from the fault (2 s) until i2's (5 s)
    assert len(bad["failures"]) == 5


@pytest.mark.unit
def test_a_fault_is_parsed_or_refused_with_a_hint() -> None:
    assert str(Fault.parse("inference:kill:20")) == "inference:kill:20"
    assert Fault.parse("kafka:restart:2.5").at_s == 2.5
    assert Fault.parse("inference:stop:20:15") == Fault("inference", "stop", 20.0, 15.0)
    assert str(Fault.parse("labelstudio:down:30:20")) == "labelstudio:down:30:20"
    assert Fault.parse("inference:scale:40").for_s is None
    assert Fault.parse("annotation-sync:kill:5").target == "annotation-sync"
    assert str(Fault.parse("monitor:kill:8")) == "monitor:kill:8"
    assert Fault.parse("trainer:kill:14").target == "trainer"
    for bad in (
        "inference:kill",
        "monitor:scale:3",
        "trainer:down:3:5",
        "inference:pause:3",
        "ingest:kill:soon",
        "inference:stop:20",  # a freeze needs its duration
        "inference:kill:20:5",  # a kill has none
        "labelstudio:kill:3",
        "ingest:scale:3",
        "kafka:stop:3:-1",
    ):
        with pytest.raises(InvalidInputError) as caught:
            Fault.parse(bad)
        assert caught.value.hint


@pytest.mark.unit
def test_the_monitor_and_trainer_checks_fail_a_lost_or_doubled_row_and_a_twice_opened_incident() -> (
    None
):
    # Image a redelivered and predicted again by v2 after a switch: one decision.
    topic = [champion("a", "v1"), champion("a", "v1"), champion("a", "v2"), champion("b", "v1")]
    fine, failures = judge_monitor(2, topic, lag=0)
    assert (fine["unique_decisions"], failures) == (2, [])
    assert judge_monitor(1, topic, lag=0)[1]  # one lost
    assert judge_monitor(3, topic, lag=0)[1]  # one doubled
    assert judge_monitor(2, topic, lag=5)[1]  # not caught up
    ok, failures = judge_trainer([["i1"], ["i2", "i3"]], lag=0)
    assert ((ok["jobs"], ok["incidents"]), failures) == ((2, 3), [])
    assert judge_trainer([["i1"], ["i1", "i2"]], lag=0)[1] == ["incident i1 is in 2 jobs"]


@pytest.mark.unit
def test_the_annotation_check_fails_an_unpushed_missing_doubled_or_unknown_task() -> None:
    acked = {"i1", "i2", "i3"}
    fine, failures = judge_annotation(
        {"s/i1": 1, "s/i2": 2}, Counter({"s/i1": 1, "s/i2": 1}), acked, site="s", lag=0
    )
    assert failures == []
    assert (fine["samples"], fine["tasks"]) == (2, 2)

    # i1 never pushed (and no task), i2 pushed twice, a task of i9 nobody sampled, a lag.
    bad, failures = judge_annotation(
        {"s/i1": None, "s/i2": 2, "s/i3": 3},
        Counter({"s/i2": 2, "s/i3": 1, "s/i9": 1}),
        acked,
        site="s",
        lag=4,
    )
    assert (bad["unpushed"], bad["missing"], bad["duplicated"], bad["unknown"]) == (1, 1, 1, 1)
    assert bad["lag_after"] == 4
    assert len(failures) == 5
    assert judge_annotation({}, Counter(), acked, site="s", lag=0)[1]  # nothing sampled: a fail
