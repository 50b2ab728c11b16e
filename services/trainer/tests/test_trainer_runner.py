"""The local-process job runner: a real subprocess trains, registers and reports; runs are
idempotent per job and attempt, and a run that dies without a verdict is reported lost."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from defectloop.testing.net import wait_until
from defectloop.trainer.registry import Registry, RunProvenance
from defectloop.trainer.runner import (
    PID_FILE,
    LocalProcessRunner,
    RunState,
    RunStatus,
    TrainingSpec,
    run_spec,
)


def _spec(tmp_path: Path, dataset: Path, **kw: object) -> TrainingSpec:
    values: dict[str, object] = {
        "job_id": "job-1",
        "attempt": 1,
        "model_version": "retrain-A-job1-a1",
        "site_id": "A",
        "dataset_dirs": (str(dataset),),
        "snapshot_sha256": "0" * 64,
        "preset": "tiny",
        "seed": 0,
        "out_dir": str(tmp_path / "bundle"),
        "database_url": f"sqlite:///{tmp_path / 'trainer.db'}",
    }
    return TrainingSpec.model_validate({**values, **kw})


async def _finished(runner: LocalProcessRunner, handle: str, timeout_s: float = 240) -> RunState:
    async def done() -> RunState | None:
        state = runner.poll(handle)
        return None if state.status == RunStatus.RUNNING else state

    return await wait_until(done, timeout_s=timeout_s, interval_s=0.5, what="the run to end")


@pytest.mark.slow
async def test_a_local_run_trains_registers_and_reports_its_version(
    tmp_path: Path, coco_factory: Callable[..., Path]
) -> None:
    runner = LocalProcessRunner(tmp_path / "runs")
    spec = _spec(tmp_path, coco_factory(tmp_path / "ds", n=12, size=64))
    handle = runner.submit(spec)
    pid = json.loads((Path(handle) / PID_FILE).read_text())["pid"]
    state = await _finished(runner, handle)
    assert state == RunState(RunStatus.SUCCEEDED, model_version="retrain-A-job1-a1")
    registry = Registry(spec.database_url)
    try:
        model = registry.get_model("retrain-A-job1-a1")
        with registry.session() as s:
            provenance = s.get(RunProvenance, model.training_run_id)
    finally:
        registry.dispose()
    assert provenance is not None
    assert (provenance.job_id, provenance.snapshot_sha256) == ("job-1", spec.snapshot_sha256)
    assert Path(model.bundle_path) == await asyncio.to_thread(Path(spec.out_dir).resolve)
    # The same spec again: the same handle, nothing started.
    assert runner.submit(spec) == handle
    assert json.loads((Path(handle) / PID_FILE).read_text())["pid"] == pid
    # A fresh runner (a restarted trainer) reads the verdict from the run directory.
    assert LocalProcessRunner(tmp_path / "runs").poll(handle).status == RunStatus.SUCCEEDED


@pytest.mark.slow
def test_a_registered_version_is_reported_not_retrained(
    tmp_path: Path, coco_factory: Callable[..., Path]
) -> None:
    from defectloop.trainer.pipeline import train_and_register

    dataset = coco_factory(tmp_path / "ds", n=8, size=64)
    spec = _spec(tmp_path, dataset, out_dir=str(tmp_path / "other-bundle"))
    registry = Registry(spec.database_url)
    try:
        train_and_register(
            [dataset],
            preset="tiny",
            seed=0,
            out_dir=tmp_path / "bundle",
            site="A",
            registry=registry,
            track=False,
            version=spec.model_version,
        )
    finally:
        registry.dispose()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(spec.model_dump_json())
    assert run_spec(run_dir / "spec.json") == 0
    result = json.loads((run_dir / "result.json").read_text())
    assert result["model_version"] == spec.model_version
    assert Path(result["bundle_path"]) == (tmp_path / "bundle").resolve()
    assert not (tmp_path / "other-bundle").exists()


@pytest.mark.unit
async def test_a_failing_run_reports_its_reason(tmp_path: Path) -> None:
    runner = LocalProcessRunner(tmp_path / "runs")
    handle = runner.submit(_spec(tmp_path, tmp_path / "ds", preset="no-such-preset"))
    state = await _finished(runner, handle, timeout_s=120)
    assert state.status == RunStatus.FAILED
    assert "no-such-preset" in state.detail


@pytest.mark.unit
async def test_a_run_that_ends_without_a_verdict_is_lost_and_can_be_resubmitted(
    tmp_path: Path, coco_factory: Callable[..., Path]
) -> None:
    spec = _spec(tmp_path, coco_factory(tmp_path / "ds", n=8, size=64))
    dead = LocalProcessRunner(tmp_path / "runs", python="/bin/false")  # exits at once, silently
    handle = dead.submit(spec)
    state = await _finished(dead, handle, timeout_s=30)
    assert state.status == RunStatus.LOST
    # Lost: submitting the same spec starts it again (not the "already running" answer).
    runner = LocalProcessRunner(tmp_path / "runs")
    assert runner.submit(spec) == handle
    assert runner.poll(handle).status == RunStatus.RUNNING
    runner.cancel(handle)
    assert runner.poll(handle).status == RunStatus.LOST
