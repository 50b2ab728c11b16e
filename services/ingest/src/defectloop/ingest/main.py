"""Entry point of the ingest service: ``python -m defectloop.ingest.main``."""

from __future__ import annotations

from fastapi import FastAPI

from defectloop.common.service import build_service_app, serve
from defectloop.ingest.settings import IngestSettings


def build_app(settings: IngestSettings) -> FastAPI:
    return build_service_app(settings)


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.ingest.main:create_app``)."""
    return build_app(IngestSettings())


if __name__ == "__main__":
    serve(build_app, IngestSettings())
