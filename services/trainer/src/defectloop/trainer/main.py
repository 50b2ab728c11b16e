"""Entry point of the trainer service: ``python -m defectloop.trainer.main``."""

from __future__ import annotations

from fastapi import FastAPI

from defectloop.common.service import build_service_app, serve
from defectloop.trainer.settings import TrainerSettings


def build_app(settings: TrainerSettings) -> FastAPI:
    return build_service_app(settings)


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.trainer.main:create_app``)."""
    return build_app(TrainerSettings())


if __name__ == "__main__":
    serve(build_app, TrainerSettings())
