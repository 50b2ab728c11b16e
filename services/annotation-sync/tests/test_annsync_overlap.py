"""Double annotation for real: two Label Studio users take tasks from Label Studio's own queue
(``/api/projects/{id}/next``, as the UI does); an overlap task reaches both, a single task only one,
and their agreement appears in annotation-sync's API for the site and for their pair."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sklearn.metrics import cohen_kappa_score

from defectloop.annotation_sync import store
from defectloop.annotation_sync.sampling import unit_hash
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import PredictionMade, prediction_id_for
from defectloop.common.kafka import build_broker, publish_event
from defectloop.factory_sim.annotators import (
    PROFILES,
    LabelStudioAPI,
    SimAnnotator,
    SkillProfile,
    annotate,
)
from defectloop.factory_sim.cameras import Truth, TruthLog, frame
from defectloop.factory_sim.sites import get_site
from defectloop.testing.net import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OVERLAP_SHARE = 0.5
# Misses every defect: on a defective image the pair disagrees about "defective or not".
BLIND = SkillProfile("blind", miss_rate=1.0, skips_unreadable=False)


@dataclass
class Served:
    site: str
    overlap: list[Truth]
    single: list[Truth]
    got: dict[str, list[int]]  # annotator email -> task ids in the order the queue served them
    task_of: dict[str, int]  # image id -> task id
    truth_of_task: dict[int, Truth]
    agreement: dict[str, Any]
    emails: tuple[str, str]


@pytest.fixture(scope="module")
async def served(
    label_studio: Any,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    annsync: Any,
) -> AsyncIterator[Served]:
    tmp: Path = tmp_path_factory.mktemp("overlap")
    site = "v" + uuid.uuid4().hex[:10]
    settings = annsync.service_settings(
        tmp, label_studio, site, ignore_other_sites=True, overlap_share=OVERLAP_SHARE
    )
    blobs = LocalBlobStore(tmp / "blobs")
    truth_log = TruthLog(tmp / "truth.jsonl")
    profile = get_site("A").with_size(128)
    overlap: list[Truth] = []
    single: list[Truth] = []
    predictions: list[PredictionMade] = []
    i = 0
    # Two overlap images with defects (so a blind annotator disagrees) and one single image.
    while len(overlap) < 2 or not single:
        png, truth = frame(profile, "cam-1", 7, i)
        i += 1
        truth = Truth(**{**truth.__dict__, "site": site})
        pid = prediction_id_for(truth.image_id, "v1", "champion")
        is_overlap = unit_hash("overlap", pid) < OVERLAP_SHARE
        if is_overlap and len(overlap) < 2 and truth.boxes:
            overlap.append(truth)
        elif not is_overlap and not single:
            single.append(truth)
        else:
            continue
        truth_log.append(truth)
        predictions.append(annsync.truth_prediction(site, truth, blobs.put(png, suffix=".png")))

    producer = build_broker(kafka_bootstrap, client_id="annsync-overlap-producer")
    await producer.start()
    api = LabelStudioAPI(label_studio.url, label_studio.token)
    a = SimAnnotator("first", PROFILES["perfect"], site)
    b = SimAnnotator("second", BLIND, site)
    try:
        async with annsync.run_service(settings, kafka_bootstrap, f"annsync-ov-{site}") as svc:
            for p in predictions:
                await publish_event(producer, p)

            async def all_pushed() -> bool:
                rows = [store.get_sample(svc.sync.engine, site, p.image_id) for p in predictions]
                return all(r is not None and r.task_id is not None for r in rows)

            await wait_until(all_pushed, what="every sample to become a task")
            rows = [store.get_sample(svc.sync.engine, site, p.image_id) for p in predictions]
            task_of = {r.image_id: r.task_id for r in rows if r is not None and r.task_id}
            truth_of_task = {task_of[t.image_id]: t for t in [*overlap, *single]}
            await api.ensure_users([a, b])
            project = await api.project_id(site)
            assert project is not None
            got: dict[str, list[int]] = {a.email: [], b.email: []}
            active = [a, b]
            while active:  # the two take turns at the queue until it has nothing for either
                for who in list(active):
                    task = await api.next_task(who, project)
                    if task is None:
                        active.remove(who)
                        continue
                    tid = int(task["id"])
                    got[who.email].append(tid)
                    work = annotate(truth_of_task[tid], who.profile, who.name)
                    await api.post(tid, who, work)
            await svc.sync.reconcile(site)  # webhooks may still be in flight: poll once
            async with httpx.AsyncClient(base_url=svc.url) as http:
                resp = await http.get(f"/v1/sites/{site}/annotation/agreement")
                resp.raise_for_status()
            yield Served(
                site,
                overlap,
                single,
                got,
                task_of,
                truth_of_task,
                resp.json(),
                (a.email, b.email),
            )
    finally:
        await api.aclose()
        await producer.stop()


async def test_each_overlap_task_is_served_to_both_annotators(served: Served) -> None:
    for truth in served.overlap:
        tid = served.task_of[truth.image_id]
        assert [tid in ids for ids in served.got.values()] == [True, True]


async def test_a_single_task_is_served_to_one_annotator_only(served: Served) -> None:
    tid = served.task_of[served.single[0].image_id]
    assert sum(ids.count(tid) for ids in served.got.values()) == 1


async def test_no_annotator_is_served_a_task_twice(served: Served) -> None:
    for ids in served.got.values():
        assert len(ids) == len(set(ids))


async def test_agreement_of_the_pair_is_in_the_api(served: Served) -> None:
    pair = sorted(served.emails)
    [row] = served.agreement["by_pair"]
    assert row["annotators"] == pair
    assert row["pairs"] == served.agreement["pairs"] == len(served.overlap)
    # The blind annotator draws no box on the defective overlap images: the pair never agrees
    # on "defective", and no box matches.
    a = [True] * len(served.overlap)
    b = [False] * len(served.overlap)
    assert row["decision_agreement"] == pytest.approx(0.0)
    assert row["kappa"] == pytest.approx(cohen_kappa_score(a, b))
    assert row["box_matched_share"] == pytest.approx(0.0)
