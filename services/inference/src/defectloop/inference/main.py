"""Entry point of the inference service: ``python -m defectloop.inference.main``."""

from __future__ import annotations

from fastapi import FastAPI

from defectloop.common.service import build_service_app, serve
from defectloop.inference.settings import InferenceSettings


def build_app(settings: InferenceSettings) -> FastAPI:
    return build_service_app(settings)


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.inference.main:create_app``)."""
    return build_app(InferenceSettings())


if __name__ == "__main__":
    serve(build_app, InferenceSettings())
