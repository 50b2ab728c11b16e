"""Where the local stack keeps its state, logs and caches."""

from __future__ import annotations

import os
from pathlib import Path


def state_home() -> Path:
    """State of the local stack: ``$DEFECTLOOP_HOME``, else ``.defectloop/`` in the working directory."""
    return Path(os.environ.get("DEFECTLOOP_HOME", ".defectloop")).resolve()


def cache_home() -> Path:
    """Downloads shared by every checkout (Kafka jars, bootstrap models): the user's cache dir."""
    base = os.environ.get("DEFECTLOOP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "defectloop"
    )
    return Path(base).resolve()
