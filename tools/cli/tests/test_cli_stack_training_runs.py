"""`defectloop down` (and the demo's restart) stop training runs the trainer left running."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from defectloop.cli.stack import stop_training_runs

pytestmark = pytest.mark.unit


def test_a_run_in_its_own_session_is_stopped_and_a_stale_pid_file_is_skipped(
    tmp_path: Path,
) -> None:
    run = tmp_path / "runs" / "job-1" / "a1"
    run.mkdir(parents=True)
    # Like LocalProcessRunner: its own session, so only a signal to its group reaches it.
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(1)"],
        start_new_session=True,
    )
    (run / "pid").write_text(json.dumps({"pid": proc.pid}))
    stale = tmp_path / "runs" / "job-0" / "a1"
    stale.mkdir(parents=True)
    (stale / "pid").write_text(json.dumps({"pid": 2**22 + 7}))  # above pid_max: no process
    (tmp_path / "runs" / "job-2" / "a1").mkdir(parents=True)  # a run with no pid file yet

    try:
        assert stop_training_runs(tmp_path / "runs") == [proc.pid]
        assert proc.wait(timeout=30) == -15  # SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stop_training_runs(tmp_path / "nothing-here") == []
