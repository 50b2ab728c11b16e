"""The ops dashboard: one HTML page and its static files, drawn in the browser from the JSON API.

``GET /dashboard`` serves ``static/index.html``; ``/dashboard/static/...`` its script, style and
the vendored chart library (uPlot, MIT, ``static/vendor/uPlot.LICENSE``), so nothing is fetched
from the internet at run time and there is no build step. The page reads only the monitor's own
``/v1`` endpoints. No authentication yet (site-scoped viewer tokens are another issue): the
monitor binds to 127.0.0.1 by default.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount ``/dashboard`` and its static files on the monitor's app."""

    @app.get("/dashboard", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
