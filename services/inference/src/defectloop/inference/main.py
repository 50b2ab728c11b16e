"""Entry point of the inference service: ``python -m defectloop.inference.main``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from defectloop.common.blobstore import BlobStore, open_blob_store
from defectloop.common.events import ModelDeployed, ModelRefused, deterministic_id
from defectloop.common.kafka import DeadLetterPublisher, publish_event
from defectloop.common.service import broker_from_settings, build_service_app, serve
from defectloop.inference.bundles import SignaturePolicy, load_deployed
from defectloop.inference.handlers import AssignmentTracker, Stats, register_handlers
from defectloop.inference.pipeline import Executors
from defectloop.inference.router import ModelRouter, deployments_follower
from defectloop.inference.settings import InferenceSettings


def build_app(settings: InferenceSettings, *, store: BlobStore | None = None) -> FastAPI:
    """The service app; ``store`` overrides the blob store named by ``settings.blob_url``."""
    broker = broker_from_settings(settings)
    store = store if store is not None else open_blob_store(settings.blob_url)
    executors = Executors(
        decode_workers=settings.decode_workers, inference_workers=settings.inference_workers
    )
    loaders = ThreadPoolExecutor(settings.model_loaders, thread_name_prefix="model-load")
    instance = f"{settings.service_name}@{socket.gethostname()}"

    async def report_refusal(
        event: ModelDeployed, reason: str, error: str, still_serving: str | None
    ) -> None:
        # The trainer appends it to the audit chain; the id is stable for the same refusal by the
        # same instance, so a redelivery or a restart refusing again adds one record only.
        refused = ModelRefused(
            event_id=deterministic_id(
                "refused", instance, event.event_id, event.sha256, event.artifact_uri, reason
            ),
            site_id=event.site_id,
            instance=instance,
            role=event.role,
            model_name=event.model_name,
            model_version=event.model_version,
            artifact_uri=event.artifact_uri,
            sha256=event.sha256,
            reason=reason,
            error=error,
            still_serving=still_serving,
        )
        await publish_event(broker, refused)

    router = ModelRouter(
        partial(
            load_deployed,
            signatures=SignaturePolicy.from_settings(settings),
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
        ),
        loaders,
        on_refused=report_refusal,
    )
    follower = deployments_follower(
        settings.kafka_bootstrap,
        router,
        dead_letters=DeadLetterPublisher(broker, settings.service_name),
        client_id=f"{settings.service_name}-{settings.group_id}",
    )
    readiness: list[asyncio.Task[None]] = []
    stats = Stats()
    assignment = AssignmentTracker()
    register_handlers(
        broker,
        settings,
        router=router,
        store=store,
        executors=executors,
        stats=stats,
        assignment=assignment,
    )

    async def follow_deployments() -> None:
        await follower.start()  # the deployments table as it is now, applied
        # Ready once the models it named are loaded; the app serves /health meanwhile and the
        # image handler waits for it.
        readiness.append(asyncio.get_running_loop().create_task(router.become_ready()))

    async def stop_following() -> None:
        for task in readiness:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await follower.stop()

    async def release_workers() -> None:
        # After the broker's graceful stop: a batch still in flight then could finish and commit.
        await router.aclose()
        executors.shutdown()
        loaders.shutdown(wait=True, cancel_futures=True)

    app = build_service_app(
        settings,
        broker=broker,
        before_start=[follow_deployments],
        on_shutdown=[stop_following],
        after_stop=[release_workers],
        description="Consumes image.captured, publishes prediction.made (see docs/inference.md).",
    )
    app.state.router = router
    app.state.follower = follower
    app.state.stats = stats
    app.state.assignment = assignment

    @app.get("/v1/models", tags=["ops"])
    async def models() -> JSONResponse:
        """Which model version serves which site and role, plus this process's partitions."""
        body = router.describe()
        body["group_id"] = settings.group_id
        body["partitions"] = assignment.describe()
        body["stats"] = stats.describe()
        return JSONResponse(body)

    return app


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.inference.main:create_app``)."""
    return build_app(InferenceSettings())


if __name__ == "__main__":
    serve(build_app, InferenceSettings())
