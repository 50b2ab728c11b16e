"""The MES contract under crash + model switch, on the real broker (issue 12 §1).

The interleaving: champion v1 predicts a batch and Kafka acknowledges its predictions, the process
"crashes" before committing (the consuming task is cancelled while it holds the published batch),
the champion is switched to v2, and a new process gets the batch again and predicts it with v2.
The topic then holds two champion predictions for those images (different ``prediction_id``s,
both kept for evaluation) but one ``decision_id``, and an MES that dedupes on it (the standalone
``examples/mes_consumer.py``) acts exactly once per image.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from faststream.kafka import KafkaBroker

from defectloop.common.events import ModelRole, PredictionMade, decision_id_for
from defectloop.common.kafka import publish_event, publish_events
from defectloop.inference import handlers

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "mes_consumer.py"


class CrashAfterPublish:
    """Stands in for ``publish_events`` in the handler: publishes for real (Kafka acknowledges),
    then holds the batch so the test can kill the consuming task before the commit."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.published = asyncio.Event()
        self.batch: list[PredictionMade] = []

    async def __call__(self, broker: KafkaBroker, events: Sequence[Any], **kwargs: Any) -> None:
        await publish_events(broker, events, **kwargs)
        mine = [e for e in events if e.site_id == self.site]
        if not mine:
            return  # other tests' images on the shared topic: let that batch commit
        self.batch.extend(mine)
        self.published.set()
        await asyncio.Event().wait()  # never returns: the crash comes first


async def test_inference_crash_before_commit_then_switch_gives_one_decision_id_per_image(
    producer: KafkaBroker,
    outputs: Any,
    site: str,
    make_bundle: Any,
    make_image: Any,
    settings_for: Any,
    run_service: Any,
    kafka_bootstrap: str,
    unique_group: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await publish_event(producer, make_bundle("v1").deployed(site))
    images = [make_image(site, "cam-1") for _ in range(6)]  # one camera: one partition, in order
    for image in images:
        await publish_event(producer, image)
    settings = settings_for(max_batch=16, max_wait_ms=200)

    crash = CrashAfterPublish(site)
    monkeypatch.setattr(handlers, "publish_events", crash)
    async with run_service(settings) as crashed:
        await asyncio.wait_for(crash.published.wait(), 60)
        (subscriber,) = crashed.state.broker.subscribers
        for task in list(subscriber.tasks):
            task.cancel()
        await asyncio.gather(*subscriber.tasks, return_exceptions=True)
    monkeypatch.undo()
    crashed_images = {p.image_id for p in crash.batch}
    assert crashed_images
    assert {p.model_version for p in crash.batch} == {"v1"}

    await publish_event(producer, make_bundle("v2").deployed(site))  # the switch, before restart
    async with run_service(settings) as restarted:
        (champion,) = restarted.state.router.snapshot().models_for(site)
        assert champion.version == "v2"
        await outputs.wait(
            lambda o: (
                {p.image_id for p in o.champion() if p.model_version == "v2"}
                >= {e.image_id for e in images}
            )
        )

    by_image: dict[str, list[PredictionMade]] = defaultdict(list)
    for p in outputs.champion():
        by_image[p.image_id].append(p)
    assert set(by_image) == {e.image_id for e in images}
    for image_id, predictions in by_image.items():
        assert {p.decision_id for p in predictions} == {
            decision_id_for(image_id, ModelRole.CHAMPION.value)
        }
    # The interleaving happened: the crashed batch's images were decided by v1 and again by v2,
    # with different prediction ids (the id dedupe of schema v1 would have let both through).
    for image_id in crashed_images:
        assert {p.model_version for p in by_image[image_id]} == {"v1", "v2"}
        assert len({p.prediction_id for p in by_image[image_id]}) == 2

    # The MES as documented (standalone client, dedupes on decision_id): one line per image.
    # Stopping after len(images) decisions: with a version-dependent id the v2 duplicates of the
    # crashed batch would be among them, so fewer distinct images would be printed.
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            str(EXAMPLE),
            "--bootstrap",
            kafka_bootstrap,
            "--group",
            f"mes-{unique_group}",
            "--site",
            site,
            "--seen-db",
            str(tmp_path / "seen.sqlite"),
            "--max-messages",
            str(len(images)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    printed = [line.split("image=")[1].split()[0] for line in result.stdout.splitlines()]
    assert sorted(printed) == sorted(e.image_id for e in images)
