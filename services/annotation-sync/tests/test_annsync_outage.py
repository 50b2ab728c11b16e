"""A Label Studio outage does not stall ``prediction.made`` (real broker, real Label Studio).

Label Studio is stopped while predictions flow: annotation-sync keeps consuming (its group commits
past them and the store records every sample as pending); once Label Studio is back, the pusher
creates each pending task, exactly once.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from defectloop.annotation_sync import store
from defectloop.common import topics
from defectloop.common.events import ScoredBox
from defectloop.common.kafka import build_broker, publish_event
from defectloop.factory_sim.annotators import LabelStudioAPI
from defectloop.testing.net import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_DURING_OUTAGE = 6
BOXES = (ScoredBox(label="spot", x=1, y=2, w=10, h=10, score=0.9),)


@pytest.fixture
async def stoppable_label_studio(
    label_studio: Any, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Any]:
    """The session's Label Studio when this session started it; else a private one."""
    from defectloop.cli import labelstudio_local
    from defectloop.testing.net import free_port

    if label_studio.layout is not None:
        yield label_studio
        labelstudio_local.start(label_studio.layout, timeout_s=400)  # back for later tests
        return
    layout = labelstudio_local.LabelStudioLayout(tmp_path_factory.mktemp("ls"), port=free_port())
    labelstudio_local.start(layout, timeout_s=400)
    try:
        yield type(label_studio)(layout.url, labelstudio_local.credentials(layout)["token"], layout)
    finally:
        labelstudio_local.stop(layout)


async def test_outage_keeps_the_partition_moving_and_tasks_are_pushed_once_back(
    stoppable_label_studio: Any,
    kafka_bootstrap: str,
    tmp_path: Path,
    annsync: Any,
) -> None:
    from defectloop.cli import labelstudio_local

    ls = stoppable_label_studio
    site = "o" + uuid.uuid4().hex[:10]
    group = f"annsync-outage-{site}"
    settings = annsync.service_settings(
        tmp_path,
        ls,
        site,
        ignore_other_sites=True,
        overlap_share=0.0,
        label_studio_retries=2,
        label_studio_timeout_s=5.0,
        push_retry_s=0.5,
    )
    producer = build_broker(kafka_bootstrap, client_id="annsync-outage-producer")
    await producer.start()
    try:
        async with annsync.run_service(settings, kafka_bootstrap, group) as svc:
            engine = svc.sync.engine

            async def pushed(image_ids: list[str]) -> bool:
                rows = [store.get_sample(engine, site, i) for i in image_ids]
                return all(r is not None and r.task_id is not None for r in rows)

            first = annsync.prediction(site, f"{site}-img-0", boxes=BOXES)
            await publish_event(producer, first)
            await wait_until(lambda: pushed([first.image_id]), what="the first task")

            labelstudio_local.stop(ls.layout)
            during = [
                annsync.prediction(site, f"{site}-img-{i}", boxes=BOXES)
                for i in range(1, N_DURING_OUTAGE + 1)
            ]
            for p in during:
                await publish_event(producer, p)
            ends = await annsync.end_offsets(kafka_bootstrap, topics.PREDICTION_MADE)

            async def consumed() -> bool:
                return bool(await annsync.committed_past(kafka_bootstrap, group, ends))

            # The handler does not wait for Label Studio: offsets are committed past the outage's
            # predictions and each is recorded as a pending sample, while nothing can be pushed.
            await wait_until(consumed, timeout_s=90, what="offsets committed during the outage")
            rows = [store.get_sample(engine, site, p.image_id) for p in during]
            assert all(r is not None for r in rows)
            assert all(r.task_id is None for r in rows if r is not None)

            labelstudio_local.start(ls.layout, timeout_s=400)
            await wait_until(
                lambda: pushed([p.image_id for p in during]),
                timeout_s=120,
                what="the pending tasks to be pushed once Label Studio is back",
            )
            api = LabelStudioAPI(ls.url, ls.token)
            try:
                project = await api.project_id(site)
                assert project is not None
                tasks = await api.tasks(project)
            finally:
                await api.aclose()
    finally:
        await producer.stop()
    per_image = Counter(t["data"]["image_id"] for t in tasks)
    assert per_image == Counter(p.image_id for p in [first, *during])
