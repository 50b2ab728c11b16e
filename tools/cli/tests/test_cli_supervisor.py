"""The supervisor notices a service process that dies at start instead of waiting out its timeout.

Real child processes: a service module that exits at once (code 3, a line on stderr) is started
exactly as ``defectloop up`` starts the five services, and ``wait_healthy`` must report it by its
exit code with the log it wrote to, not "not healthy after 600 s".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.cli import supervisor
from defectloop.common.errors import ComponentError
from defectloop.testing.net import free_port

pytestmark = pytest.mark.integration

DIES_AT_START = """\
import sys

print("dies_at_start: settings refused", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture
def dying_service(tmp_path: Path) -> tuple[supervisor.ServiceSpec, dict[str, str]]:
    """A service whose module exits with code 3 before it serves anything."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "dies_at_start.py").write_text(DIES_AT_START)
    spec = supervisor.ServiceSpec("dying", "dies_at_start", free_port())
    return spec, {"PYTHONPATH": str(modules)}


def test_wait_healthy_reports_a_service_that_exited_at_start_with_its_code_and_log(
    tmp_path: Path, dying_service: tuple[supervisor.ServiceSpec, dict[str, str]]
) -> None:
    spec, env = dying_service
    home = tmp_path / "home"
    supervisor.start_service(spec, env=env, home=home, traces=False)

    # A timeout far past any slow start: reaching it would say "not healthy after 600 s".
    with pytest.raises(ComponentError) as caught:
        supervisor.wait_healthy(spec, timeout_s=600, home=home)

    log = supervisor.log_dir(home) / "dying.log"
    assert str(caught.value) == "dying exited with code 3 at start"
    assert caught.value.hint == f"see {log}"
    assert "dies_at_start: settings refused" in log.read_text()
    assert not supervisor.pid_file(spec, home).exists()  # a later start starts it again


def test_a_service_that_died_at_start_can_be_started_again(
    tmp_path: Path, dying_service: tuple[supervisor.ServiceSpec, dict[str, str]]
) -> None:
    spec, env = dying_service
    home = tmp_path / "home"
    first = supervisor.start_service(spec, env=env, home=home, traces=False)
    with pytest.raises(ComponentError, match="exited with code 3"):
        supervisor.wait_healthy(spec, timeout_s=600, home=home)

    second = supervisor.start_service(spec, env=env, home=home, traces=False)
    with pytest.raises(ComponentError, match="exited with code 3"):
        supervisor.wait_healthy(spec, timeout_s=600, home=home)

    assert second != first  # a new process, not the dead one's pid file taken for a live service
    log = (supervisor.log_dir(home) / "dying.log").read_text()
    assert log.count("dies_at_start: settings refused") == 2
