"""Entry point of the annotation-sync service: ``python -m defectloop.annotation_sync.main``."""

from __future__ import annotations

from fastapi import FastAPI

from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.common.service import build_service_app, serve


def build_app(settings: AnnotationSyncSettings) -> FastAPI:
    return build_service_app(settings)


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.annotation_sync.main:create_app``)."""
    return build_app(AnnotationSyncSettings())


if __name__ == "__main__":
    serve(build_app, AnnotationSyncSettings())
