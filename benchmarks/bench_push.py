"""annotation-sync's task push against a real Label Studio: tasks pushed per second, before/after.

Records ``--n`` pending samples (half of them overlap, as ``overlap_share=0.5``) in a fresh
SQLite store, then times pushing them all into a fresh project of a running Label Studio:

- ``serial``: the push before batching, one sample at a time: a Data Manager filter query
  (``find_task``), a one-task import, the overlap PATCH where wanted, a database update;
- ``batch=K``: :meth:`TaskPusher.push_pending` with ``push_batch_size=K`` (one import per batch,
  the overlap PATCH where wanted, one transaction per batch).

Needs a running Label Studio (``defectloop labelstudio start`` prints its URL and token)::

    .venv/bin/python benchmarks/bench_push.py --ls-url http://127.0.0.1:8080 --ls-token TOKEN \\
        [--n 200] [--batch 1 --batch 50]

Prints one JSON line and writes ``benchmarks/results/push.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from defectloop.annotation_sync import store
from defectloop.annotation_sync.push import TaskPusher
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common.db import make_engine
from defectloop.common.events import (
    AnnotationCompleted,
    ModelRole,
    PredictionMade,
    ScoredBox,
    prediction_id_for,
)

RESULTS = Path(__file__).parent / "results" / "push.json"


def _prediction(site: str, i: int, at: datetime) -> PredictionMade:
    image_id = f"img-{i:05d}"
    return PredictionMade(
        site_id=site,
        camera_id="cam-1",
        prediction_id=prediction_id_for(image_id, "v1", "champion"),
        image_id=image_id,
        sha256="0" * 64,
        blob_uri="file:///nowhere.png",
        width=256,
        height=256,
        boxes=(ScoredBox(label="spot", x=10, y=10, w=20, h=20, score=0.9),),
        defective=True,
        decision_score=0.9,
        decision_threshold=0.5,
        model_name="m",
        model_version="v1",
        role=ModelRole.CHAMPION,
        outlier_score=0.1,
        outlier=False,
        captured_at=at + timedelta(milliseconds=i),
        queue_latency_ms=0,
        inference_latency_ms=0,
    )


async def _serial(pusher: TaskPusher) -> int:
    """The push before batching (kept here only to measure it)."""
    pushed = 0
    for sample in store.unpushed(pusher.engine):
        project = await pusher.registry.site(sample.site_id)
        client = project.client
        task_id = await client.find_task(project.project_id, sample.key)
        if task_id is None:
            boxes = store.sample_boxes_of(pusher.engine, [sample.key]).get(sample.key)
            task = pusher._task(sample, boxes, "serial")  # the same payload as the pusher
            (task_id,) = await client.import_tasks(project.project_id, [task])
        if sample.annotators > 1:
            await client.set_overlap(task_id, sample.annotators)
        store.mark_pushed_many(
            pusher.engine, {sample.key: task_id}, project.project_id, datetime.now(UTC)
        )
        pushed += 1
    return pushed


async def _run(args: argparse.Namespace, tmp: Path, mode: str) -> dict[str, Any]:
    site = "bench" + uuid.uuid4().hex[:8]
    batch = int(mode.split("=")[1]) if mode.startswith("batch=") else 1
    settings = AnnotationSyncSettings(
        database_url=f"sqlite:///{tmp / (site + '.db')}",
        blob_url=(tmp / "blobs").as_uri(),
        label_studio_url=args.ls_url,
        label_studio_token=args.ls_token,
        sites=[site],
        random_share=1.0,
        overlap_share=0.5,
        daily_budget=10**6,
        push_batch_size=batch,
        log_level="WARNING",
    )

    async def publish(_: AnnotationCompleted) -> None:
        raise AssertionError("nothing is published here")

    sync = AnnotationSync(settings, make_engine(settings.resolved_database_url()), publish)
    try:
        t0 = datetime.now(UTC)
        for i in range(args.n):
            await sync.on_prediction(_prediction(site, i, t0))
        overlap = sum(1 for s in store.unpushed(sync.engine) if s.annotators > 1)
        await sync.registry.site(site)  # project + webhook creation is not part of the push
        began = time.perf_counter()
        pushed = await (_serial(sync.pusher) if mode == "serial" else sync.push_pending())
        elapsed = time.perf_counter() - began
        assert pushed == args.n, (pushed, args.n)
        assert not store.unpushed(sync.engine)
    finally:
        await sync.aclose()
    return {
        "mode": mode,
        "tasks": args.n,
        "overlap_tasks": overlap,
        "seconds": round(elapsed, 2),
        "tasks_per_s": round(args.n / elapsed, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ls-url", required=True)
    parser.add_argument("--ls-token", required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default 1, 50)")
    args = parser.parse_args()
    modes = ["serial", *(f"batch={b}" for b in (args.batch or [1, 50]))]
    with tempfile.TemporaryDirectory() as d:
        rows = [await _run(args, Path(d), m) for m in modes]
    result = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
