"""Where the local stack keeps its state, logs and caches."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def state_home() -> Path:
    """State of the local stack: ``$DEFECTLOOP_HOME``, else ``.defectloop/`` in the working directory."""
    return Path(os.environ.get("DEFECTLOOP_HOME", ".defectloop")).resolve()


def cache_home() -> Path:
    """Downloads shared by every checkout (Kafka jars, bootstrap models): ``$DEFECTLOOP_CACHE``,
    else the user's cache dir (``$XDG_CACHE_HOME/defectloop`` or ``~/.cache/defectloop`` on Linux,
    the path ``scripts/install-labelstudio.sh`` uses too)."""
    base = os.environ.get("DEFECTLOOP_CACHE")
    return (Path(base) if base else platformdirs.user_cache_path("defectloop")).resolve()
