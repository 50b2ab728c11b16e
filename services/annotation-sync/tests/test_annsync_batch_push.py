"""Batch push against the real Label Studio: one import per batch, ids in order, crash-safe.

The Label Studio client runs over a counting transport (the real HTTP transport, requests
counted by route) so the tests can say how many imports and lookups a push made; the crash tests
make that transport lose an import's answer (after Label Studio created the tasks) or fail before
sending it, then push again from a fresh service on the same database, as after a restart.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from defectloop.annotation_sync import store
from defectloop.annotation_sync.labelstudio import LabelStudioClient
from defectloop.annotation_sync.push import batches
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common.db import make_engine
from defectloop.common.errors import TransientError
from defectloop.common.events import AnnotationCompleted
from defectloop.common.metrics import ANNOTATION_UNPUSHED

N = 7
BATCH = 3


class CountingTransport(httpx.AsyncBaseTransport):
    """The real transport, counting requests by (method, route kind); ``fail_import`` makes the
    next import lose its answer ("after": Label Studio got it) or never arrive ("before")."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.calls: Counter[str] = Counter()
        self.fail_import: str | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        kind = "import" if path.endswith("/import") else path.rstrip("/").rsplit("/", 1)[-1]
        key = f"{request.method} {'task' if kind.isdigit() else kind}"
        self.calls[key] += 1
        if kind == "import" and self.fail_import == "before":
            self.fail_import = None
            raise httpx.ConnectError("simulated: the import never reached Label Studio")
        response = await self.inner.handle_async_request(request)
        if kind == "import" and self.fail_import == "after":
            self.fail_import = None
            await response.aread()  # Label Studio created the tasks; we never see the answer
            raise httpx.ReadError("simulated: the import's answer was lost")
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_sync(settings: AnnotationSyncSettings, transport: CountingTransport) -> AnnotationSync:
    async def publish(_: AnnotationCompleted) -> None:
        raise AssertionError("nothing is published here")

    def client(site: str) -> LabelStudioClient:
        inst = settings.instance_for(site)
        return LabelStudioClient(inst.url, inst.token, backoff_s=0.05, transport=transport)

    return AnnotationSync(
        settings,
        make_engine(settings.resolved_database_url()),
        publish,
        client_factory=client,
    )


Recorder = Callable[[AnnotationSync], Awaitable[list[store.Sample]]]


@pytest.fixture
def setup(
    label_studio: Any, tmp_path: Path, annsync: Any
) -> tuple[AnnotationSyncSettings, str, Recorder]:
    """Settings for a fresh site (half the samples overlap), and a recorder of N samples."""
    site = "b" + uuid.uuid4().hex[:10]
    settings = annsync.service_settings(
        tmp_path, label_studio, site, overlap_share=0.5, push_batch_size=BATCH
    )

    async def record(sync: AnnotationSync) -> list[store.Sample]:
        t0 = datetime.now(UTC)
        samples = []
        for i in range(N):
            p = annsync.prediction(site, f"img-{i:02d}", captured_at=t0 + timedelta(seconds=i))
            sample = await sync.on_prediction(p)
            assert sample is not None
            samples.append(sample)
        return samples

    return settings, site, record


async def ls_tasks(sync: AnnotationSync, site: str) -> list[dict[str, Any]]:
    project = await sync.registry.site(site)
    return [t async for t in project.client.iter_tasks(project.project_id)]


def pending_attempts(sync: AnnotationSync) -> list[store.PushAttempt]:
    with Session(sync.engine) as s:
        return list(s.exec(select(store.PushAttempt)))


@pytest.mark.integration
async def test_batches_are_one_import_each_with_ids_in_payload_order(setup: Any) -> None:
    settings, site, record = setup
    transport = CountingTransport()
    sync = make_sync(settings, transport)
    try:
        samples = await record(sync)
        assert await sync.push_pending() == N
        assert transport.calls["POST import"] == -(-N // BATCH)  # 7 in batches of 3: 3 imports
        assert transport.calls["GET tasks"] == 0  # no lookup in the normal path
        wanted = sum(1 for s in samples if s.annotators > 1)
        assert 0 < wanted < N  # both kinds are in the batches
        assert transport.calls["PATCH task"] == wanted  # overlap only where it is wanted
        tasks = {int(t["id"]): t for t in await ls_tasks(sync, site)}
        assert len(tasks) == N
        for s in samples:
            row = store.get_sample(sync.engine, site, s.image_id)
            assert row is not None
            assert row.task_id is not None
            # the id recorded for the sample is the task that carries its key and its overlap
            assert tasks[row.task_id]["data"]["defectloop_key"] == s.key
            assert tasks[row.task_id]["overlap"] == s.annotators
        assert pending_attempts(sync) == []
        assert ANNOTATION_UNPUSHED.labels(site)._value.get() == 0
    finally:
        await sync.aclose()
        await transport.aclose()


@pytest.mark.integration
@pytest.mark.parametrize("lost", ["after", "before"])
async def test_a_crash_between_the_import_and_the_record_pushes_nothing_twice(
    setup: Any, lost: str
) -> None:
    """``after``: Label Studio created the first batch but the answer was lost (as if we crashed
    before recording); ``before``: the import never arrived. A restarted service pushes every
    sample exactly once, looking up only the batch that was in flight."""
    settings, site, record = setup
    first = CountingTransport()
    sync = make_sync(settings, first)
    try:
        samples = await record(sync)
        first.fail_import = lost
        with pytest.raises(TransientError):
            await sync.push_pending()
        assert first.calls["POST import"] == 1  # never retried blindly: it may have landed
        assert all(r.task_id is None for r in store.unpushed(sync.engine))
        assert len(pending_attempts(sync)) == BATCH  # the first batch is marked in flight
        assert ANNOTATION_UNPUSHED.labels(site)._value.get() == N
    finally:
        await sync.aclose()
        await first.aclose()

    second = CountingTransport()
    restarted = make_sync(settings, second)
    try:
        assert await restarted.push_pending() == N
        assert second.calls["GET tasks"] == 1  # one filter query for the in-flight batch
        # lost answer: the first batch is recovered, only the rest is imported (2 batches)
        assert second.calls["POST import"] == (2 if lost == "after" else 3)
        tasks = await ls_tasks(restarted, site)
        keys = Counter(t["data"]["defectloop_key"] for t in tasks)
        assert keys == Counter(s.key for s in samples)  # each once: nothing twice, none lost
        by_id = {int(t["id"]): t for t in tasks}
        for s in samples:
            row = store.get_sample(restarted.engine, site, s.image_id)
            assert row is not None
            assert row.task_id is not None
            assert by_id[row.task_id]["data"]["defectloop_key"] == s.key
            assert by_id[row.task_id]["overlap"] == s.annotators  # recovered ones too
        assert pending_attempts(restarted) == []
        assert await restarted.push_pending() == 0  # and nothing more later
        assert second.calls["POST import"] == (2 if lost == "after" else 3)
    finally:
        await restarted.aclose()
        await second.aclose()


@pytest.mark.unit
def test_batches_are_per_site_and_oldest_first() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def sample(site: str, i: int, at: int) -> store.Sample:
        return store.Sample(
            key=f"{site}/{i}",
            site_id=site,
            image_id=str(i),
            camera_id="c",
            prediction_id=str(i),
            reason="random",
            day=t0.date(),
            blob_uri="file:///x",
            width=1,
            height=1,
            model_version="v1",
            predicted_defective=False,
            created_at=t0 + timedelta(seconds=at),
        )

    pending = [sample("a", 0, 0), sample("b", 1, 1), sample("a", 2, 2), sample("a", 3, 3)]
    pending += [sample("b", 4, 4)]
    got = [[s.key for s in b] for b in batches(pending, 2)]
    assert got == [["a/0", "a/2"], ["b/1", "b/4"], ["a/3"]]
