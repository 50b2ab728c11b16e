"""Measure annotation-sync's throughput against a real Label Studio and a real Kafka broker.

    python services/annotation-sync/scripts/measure_sync.py \
        --ls-url http://127.0.0.1:8080 --ls-token TOKEN --bootstrap 127.0.0.1:9092 --n 200

Two figures, annotations/s:
- webhook path: simulated annotators post N annotations while the service runs; from the first
  post to the last ``annotation.completed`` acknowledged by Kafka (includes Label Studio's own
  annotation write and its synchronous webhook call);
- poll path: N annotations made while the service is down, emitted by one reconciliation.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import uvicorn

from defectloop.annotation_sync import store
from defectloop.annotation_sync.main import build_app
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import ModelRole, PredictionMade, ScoredBox, prediction_id_for
from defectloop.common.kafka import build_broker
from defectloop.factory_sim.annotators import PROFILES, AnnotatorTeam, LabelStudioAPI, SimAnnotator
from defectloop.factory_sim.cameras import TruthLog, frame
from defectloop.factory_sim.sites import get_site
from defectloop.testing.net import free_port


async def _phase(args: argparse.Namespace, tmp: Path, site: str, webhook: bool) -> float:
    settings = AnnotationSyncSettings(
        port=free_port(),
        database_url=f"sqlite:///{tmp / (site + '.db')}",
        blob_url=(tmp / "blobs").as_uri(),
        label_studio_url=args.ls_url,
        label_studio_token=args.ls_token,
        sites=[site],
        ignore_other_sites=True,
        poll_interval_s=3600,
        random_share=1.0,
        overlap_share=0.0,
        daily_budget=10**6,
        log_level="WARNING",
    )
    blobs = LocalBlobStore(tmp / "blobs")
    truth = TruthLog(tmp / "truth.jsonl")
    profile = get_site("A").with_size(256)
    broker = build_broker(args.bootstrap, client_id="measure")
    app = build_app(settings, broker=broker, group_id=f"measure-{site}")
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=settings.port, log_config=None, log_level="warning"
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    sync = app.state.sync
    for i in range(args.n):
        png, t = frame(profile, "cam-1", 7, i)
        truth.append(t)
        uri = blobs.put(png, suffix=".png")
        await sync.on_prediction(
            PredictionMade(
                site_id=site,
                camera_id="cam-1",
                image_id=t.image_id,
                prediction_id=prediction_id_for(t.image_id, "v1", "champion"),
                sha256=uri.rsplit("/", 1)[1][:64],
                blob_uri=uri,
                width=t.width,
                height=t.height,
                boxes=tuple(
                    ScoredBox(label=b.label, x=b.x, y=b.y, w=b.w, h=b.h, score=0.9) for b in t.boxes
                ),
                defective=bool(t.boxes),
                decision_score=0.9,
                decision_threshold=0.5,
                model_name="m",
                model_version="v1",
                role=ModelRole.CHAMPION,
                outlier_score=0.1,
                outlier=False,
                captured_at=datetime.now(UTC),
                queue_latency_ms=0,
                inference_latency_ms=0,
            )
        )
    await sync.push_pending()  # the handler only records samples: make the tasks now
    api = LabelStudioAPI(args.ls_url, args.ls_token)
    team = AnnotatorTeam(site, api, truth, [SimAnnotator("bench", PROFILES["perfect"], site)])
    assert await team.setup()
    if not webhook:
        server.should_exit = True
        await serving
        await team.step()
        broker = build_broker(args.bootstrap, client_id="measure")
        await broker.start()
        app2 = build_app(settings, broker=broker, group_id=f"measure-{site}")
        sync = app2.state.sync
        began = time.perf_counter()
        emitted = await sync.reconcile_all()
        elapsed = time.perf_counter() - began
        await sync.aclose()
        await broker.stop()
    else:
        began = time.perf_counter()
        await team.step()
        while (  # noqa: ASYNC110 - polling the service's database: a measurement, not a test
            len(store.current_annotations(sync.engine, site)) < args.n
            or store.unpublished(sync.engine)
        ):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - began
        emitted = len(store.current_annotations(sync.engine, site))
        server.should_exit = True
        await serving
    await api.aclose()
    assert emitted == args.n, (emitted, args.n)
    return args.n / elapsed


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ls-url", required=True)
    ap.add_argument("--ls-token", required=True)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--n", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        hook = await _phase(args, tmp, "m" + uuid.uuid4().hex[:8], webhook=True)
        poll = await _phase(args, tmp, "m" + uuid.uuid4().hex[:8], webhook=False)
    print(
        json.dumps(
            {"n": args.n, "webhook_path_per_s": round(hook, 1), "poll_path_per_s": round(poll, 1)}
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
