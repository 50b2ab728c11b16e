"""Entry point of the trainer service: ``python -m defectloop.trainer.main``."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from sqlalchemy import Engine

from defectloop.common.blobstore import BlobStore, open_blob_store
from defectloop.common.db import make_engine
from defectloop.common.service import broker_from_settings, build_service_app, serve
from defectloop.trainer import handlers, routes
from defectloop.trainer.gating import Gatekeeper
from defectloop.trainer.governance import Governance, PromotionPolicy
from defectloop.trainer.jobs import JobStore
from defectloop.trainer.promotion import Promoter, ScorecardClient
from defectloop.trainer.registry import Registry
from defectloop.trainer.retrain import OnTrained, Retrainer
from defectloop.trainer.runner import JobRunner, LocalProcessRunner
from defectloop.trainer.settings import TrainerSettings


def build_app(
    settings: TrainerSettings,
    *,
    broker: KafkaBroker | None = None,
    engine: Engine | None = None,
    runner: JobRunner | None = None,
    blobs: BlobStore | None = None,
    on_trained: OnTrained | None = None,
    on_shadow: OnTrained | None = None,
    group_id: str | None = None,
) -> FastAPI:
    """The trainer service; ``on_trained`` / ``on_shadow`` default to the gates and promotion."""
    kafka = broker if broker is not None else broker_from_settings(settings)
    db = (
        engine
        if engine is not None
        else make_engine(settings.resolved_database_url(), create_tables=False)
    )
    store = JobStore(db)
    blob_store = blobs if blobs is not None else open_blob_store(settings.blob_url)
    registry: Registry | None = None
    if on_trained is None or on_shadow is None:
        registry = Registry(settings.resolved_database_url())
        governance = Governance(
            registry,
            bootstrap=settings.kafka_bootstrap,
            policy=PromotionPolicy.from_settings(settings),
        )
        on_trained = on_trained or Gatekeeper(
            store,
            blob_store,
            governance,
            work_dir=settings.resolved_work_dir(),
            config=settings.gate,
            actor=settings.actor,
        )
        on_shadow = on_shadow or Promoter(
            store,
            governance,
            ScorecardClient(settings.monitor_url),
            settings.retrain_policy_for,
            poll_s=settings.scorecard_poll_s,
            actor=settings.actor,
        )
    retrainer = Retrainer(
        settings,
        store,
        runner if runner is not None else LocalProcessRunner(settings.resolved_work_dir() / "runs"),
        blob_store,
        handlers.labels_request_publisher(kafka),
        on_trained=on_trained,
        on_shadow=on_shadow,
    )
    # The audit chain lives in the registry's database: refusals by inference are appended to it.
    audit = registry if registry is not None else Registry(settings.resolved_database_url())
    handlers.subscribe(kafka, retrainer, group_id=group_id or settings.consumer_group, audit=audit)
    deployments = handlers.deployments_follower(kafka, retrainer)
    background: list[asyncio.Task[None]] = []

    async def on_startup() -> None:
        background.append(asyncio.create_task(retrainer.run_forever(), name="trainer-jobs"))

    async def on_shutdown() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await deployments.stop()
        audit.dispose()

    app = build_service_app(
        settings,
        broker=kafka,
        # The champion of each site is known before the first incident is handled.
        before_start=[deployments.start],
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
    )
    app.state.retrainer = retrainer
    routes.install(app, retrainer.store, tokens_required=settings.tokens_required)
    return app


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.trainer.main:create_app``)."""
    return build_app(TrainerSettings())


if __name__ == "__main__":
    serve(build_app, TrainerSettings())
