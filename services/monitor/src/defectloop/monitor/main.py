"""Entry point of the monitor service: ``python -m defectloop.monitor.main``."""

from __future__ import annotations

from fastapi import FastAPI

from defectloop.common.service import build_service_app, serve
from defectloop.monitor.settings import MonitorSettings


def build_app(settings: MonitorSettings) -> FastAPI:
    return build_service_app(settings)


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.monitor.main:create_app``)."""
    return build_app(MonitorSettings())


if __name__ == "__main__":
    serve(build_app, MonitorSettings())
