"""Headless Debian Chromium as the browser tests (and scripts/zipkin_screenshot.py) run it.

The flags of issue 11's browser test: no sandbox (CI runs as root), no GPU, and nothing that
would reach out to the internet on its own (background networking, component updates, sync,
first-run pages); each run also gets a fresh ``--user-data-dir`` (a new persistent context).
"""

from __future__ import annotations

import shutil

CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def system_chromium() -> str | None:
    """Debian's ``chromium`` (``scripts/ensure-system-deps.sh`` installs it), or None."""
    return shutil.which("chromium")
