"""A state home of its own for a test: nothing read from or written to the developer's."""

from __future__ import annotations

from pathlib import Path

import pytest

# Environment that would point a test at a shared database or tracking server.
SHARED_STATE_ENV = (
    "DEFECTLOOP_TRAINER_DB_URL",
    "DEFECTLOOP_TRAINER_DATABASE_URL",
    "MLFLOW_TRACKING_URI",
)


def isolate_state(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    """Point ``DEFECTLOOP_HOME`` at ``root / "home"`` and clear :data:`SHARED_STATE_ENV`."""
    home = root / "home"
    monkeypatch.setenv("DEFECTLOOP_HOME", str(home))
    for name in SHARED_STATE_ENV:
        monkeypatch.delenv(name, raising=False)
    return home
