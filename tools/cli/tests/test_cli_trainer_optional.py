"""The trainer is an optional extra of the CLI: without it, the CLI works and the training
commands fail with one line and a hint (never an ImportError traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

# Runs the CLI with `defectloop.trainer` made unimportable, as if the extra were not installed.
_WITHOUT_TRAINER = """
import sys
from importlib.abc import MetaPathFinder

class _NoTrainer(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "defectloop.trainer" or name.startswith("defectloop.trainer."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTrainer())
sys.argv = ["defectloop", *sys.argv[1:]]
from defectloop.cli.app import main
sys.exit(main())
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRAINER, *args],
        env={**os.environ, "DEFECTLOOP_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("models", "list"),
        ("models", "show", "v1"),
        ("models", "why", "v1"),
        ("train", "--dataset", "d", "--out", "o"),
        ("models", "deploy", "bundle", "--site", "A"),
        ("models", "approve", "v1", "--as", "bob"),
        ("audit", "verify"),
    ],
)
def test_a_training_command_without_the_trainer_is_one_line_and_a_hint(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = _run(tmp_path, *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert lines[0] == "error: this command needs the trainer, which is not installed"
    assert lines[1] == "hint: install it with: pip install 'defectloop-cli[train]'"


def test_the_cli_works_without_the_trainer(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    result = _run(tmp_path, "gateway-token", "--site", "A", "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dlg_")
