"""Where training runs: outside the consumer's event loop, behind a small interface.

:class:`JobRunner` is ``submit(spec) -> handle``, ``poll(handle) -> RunState``, ``cancel(handle)``.
Handles are plain strings the trainer stores in its database, so a restarted trainer polls the
runs an earlier process submitted. :class:`LocalProcessRunner` (the default) starts one
subprocess per run, ``python -m defectloop.trainer.runner SPEC.json``, which trains with the
existing pipeline (:func:`defectloop.trainer.pipeline.train_and_register`) and writes
``result.json`` or ``error.json`` next to its spec. **A cluster job runner plugs in here**: a
class with the same three methods that submits the same JSON spec as a Kubernetes Job / Slurm /
Ray task and reads the same result file back (from shared storage) satisfies the protocol.

Submitting is idempotent per run directory (a job's id and attempt): if a run of that spec is
alive or finished, the same handle is returned and nothing is started twice. The worker checks
the registry before training: a model version already registered is reported, not retrained.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from defectloop.common.errors import DefectloopError, NotFoundError
from defectloop.common.logging import get_logger

log = get_logger(__name__)

SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
PID_FILE = "pid"
LOG_FILE = "train.log"
PROGRESS_FILE = "progress.json"  # {"epoch", "epochs", "loss"}: ops and the demo watch the run


class TrainingSpec(BaseModel):
    """Everything a training run needs, as JSON (what any runner hands its worker)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    attempt: int = Field(ge=1)
    model_version: str = Field(description="Deterministic from job id and attempt.")
    site_id: str
    dataset_dirs: tuple[str, ...]
    snapshot_sha256: str
    preset: str
    seed: int
    out_dir: str
    parent_bundle: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    database_url: str | None = Field(None, description="The trainer registry the run writes to.")


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"  # no result and no process: the run died with its host or was never started


@dataclass(frozen=True)
class RunState:
    status: RunStatus
    model_version: str | None = None
    detail: str = ""
    progress: dict[str, Any] | None = None  # the worker's last epoch, while it runs


class JobRunner(Protocol):
    def submit(self, spec: TrainingSpec) -> str:
        """Start (or find) the run of ``spec``; return its handle."""

    def poll(self, handle: str) -> RunState: ...

    def cancel(self, handle: str) -> None: ...


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class LocalProcessRunner:
    """One subprocess per run, under ``root/<job_id>/a<attempt>/``; handle = that directory."""

    def __init__(self, root: Path, *, python: str = sys.executable) -> None:
        self.root = root
        self.python = python
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def run_dir(self, spec: TrainingSpec) -> Path:
        return self.root / spec.job_id / f"a{spec.attempt}"

    def submit(self, spec: TrainingSpec) -> str:
        run_dir = self.run_dir(spec)
        handle = str(run_dir)
        state = self.poll(handle) if (run_dir / SPEC_FILE).exists() else None
        if state is not None and state.status != RunStatus.LOST:
            return handle
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        _write_json(run_dir / SPEC_FILE, spec.model_dump(mode="json"))
        env = dict(os.environ)
        if spec.database_url:
            env["DEFECTLOOP_TRAINER_DATABASE_URL"] = spec.database_url
        with (run_dir / LOG_FILE).open("ab") as out:
            # Own session: a signal to the trainer's process group does not reach the run, and
            # a run outlives a killed trainer (the restarted one polls it by its directory).
            proc = subprocess.Popen(
                [self.python, "-m", "defectloop.trainer.runner", str(run_dir / SPEC_FILE)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        _write_json(run_dir / PID_FILE, {"pid": proc.pid})
        self._children[handle] = proc
        log.info("training_submitted", job_id=spec.job_id, attempt=spec.attempt, pid=proc.pid)
        return handle

    def poll(self, handle: str) -> RunState:
        run_dir = Path(handle)
        child = self._children.get(handle)
        if child is not None and child.poll() is not None:
            self._children.pop(handle, None)  # reaped
        result = run_dir / RESULT_FILE
        if result.exists():
            data = json.loads(result.read_text())
            return RunState(RunStatus.SUCCEEDED, model_version=data["model_version"])
        error = run_dir / ERROR_FILE
        if error.exists():
            data = json.loads(error.read_text())
            return RunState(RunStatus.FAILED, detail=f"{data['reason']}: {data['error']}")
        pid = self._pid(run_dir)
        # Not our child: started by an earlier trainer process, still alive on its own.
        if pid is not None and (handle in self._children or _alive(pid)):
            return RunState(RunStatus.RUNNING, progress=_read_progress(run_dir))
        return RunState(RunStatus.LOST, detail="the training process ended without a result")

    def cancel(self, handle: str) -> None:
        pid = self._pid(Path(handle))
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        child = self._children.pop(handle, None)
        if child is not None:
            child.wait()

    @staticmethod
    def _pid(run_dir: Path) -> int | None:
        try:
            return int(json.loads((run_dir / PID_FILE).read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None


def _read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((run_dir / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data


def _progress_file(path: Path) -> Any:
    """A training progress sink that keeps the last epoch in ``path`` (written atomically)."""
    from defectloop.trainer.train import EpochStats, ProgressSink  # the training half: lazily

    class ProgressFile(ProgressSink):
        epochs = 0

        def start(self, total_epochs: int, steps_per_epoch: int) -> None:
            self.epochs = total_epochs
            _write_json(path, {"epoch": 0, "epochs": total_epochs, "loss": None})

        def epoch_end(self, stats: EpochStats) -> None:
            _write_json(
                path, {"epoch": stats.epoch, "epochs": self.epochs, "loss": round(stats.loss, 4)}
            )

    return ProgressFile()


def run_spec(spec_path: Path) -> int:
    """The worker: train the spec's run (unless its version is registered), write the result."""
    run_dir = spec_path.parent
    spec = TrainingSpec.model_validate_json(spec_path.read_bytes())
    from defectloop.trainer.registry import Registry

    registry = Registry(spec.database_url)
    try:
        try:
            model = registry.get_model(spec.model_version)
            log.info("training_already_registered", model_version=model.version)
        except NotFoundError:
            from defectloop.trainer.pipeline import train_and_register

            outcome = train_and_register(
                [Path(d) for d in spec.dataset_dirs],
                preset=spec.preset,
                seed=spec.seed,
                out_dir=Path(spec.out_dir),
                site=spec.site_id,
                parent_bundle=Path(spec.parent_bundle) if spec.parent_bundle else None,
                overrides=spec.overrides or None,
                registry=registry,
                track=False,
                version=spec.model_version,
                job_id=spec.job_id,
                snapshot_sha256=spec.snapshot_sha256,
                progress=_progress_file(run_dir / PROGRESS_FILE),
            )
            model = outcome.model
    except DefectloopError as exc:
        _write_json(run_dir / ERROR_FILE, {"reason": exc.reason, "error": str(exc)})
        log.error("training_failed", job_id=spec.job_id, reason=exc.reason, error=str(exc))
        return 1
    except Exception as exc:  # the worker must always leave a verdict for the poller
        _write_json(
            run_dir / ERROR_FILE, {"reason": "crashed", "error": f"{type(exc).__name__}: {exc}"}
        )
        log.exception("training_crashed", job_id=spec.job_id)
        return 1
    finally:
        registry.dispose()
    _write_json(
        run_dir / RESULT_FILE,
        {"model_version": model.version, "sha256": model.sha256, "bundle_path": model.bundle_path},
    )
    return 0


if __name__ == "__main__":
    from defectloop.common.logging import configure_logging

    configure_logging("trainer-run", fmt="json")
    sys.exit(run_spec(Path(sys.argv[1])))
