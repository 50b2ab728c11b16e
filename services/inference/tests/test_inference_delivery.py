"""Delivery on the real broker: consumer-group scaling, and a batch interrupted before its commit."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from faststream.kafka import KafkaBroker

from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import Event
from defectloop.common.kafka import publish_event

pytestmark = pytest.mark.integration


async def _publish(broker: KafkaBroker, *events: Event) -> None:
    for event in events:
        await publish_event(broker, event)


async def _image_partitions(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topics.IMAGE_CAPTURED])
    finally:
        await admin.close()
    return len(described["partitions"])


def _cameras_covering(site: str, n_partitions: int, per_partition: int) -> list[str]:
    """Camera ids whose site/camera keys land on every partition, ``per_partition`` each."""
    partitioner = DefaultPartitioner()
    all_partitions = list(range(n_partitions))
    chosen: dict[int, list[str]] = {p: [] for p in all_partitions}
    i = 0
    while any(len(c) < per_partition for c in chosen.values()):
        camera = f"cam-{i}"
        p = partitioner(f"{site}/{camera}".encode(), all_partitions, all_partitions)
        if len(chosen[p]) < per_partition:
            chosen[p].append(camera)
        i += 1
    return [c for cams in chosen.values() for c in cams]


async def test_inference_two_instances_in_one_group_split_partitions_and_predict_each_image_once(
    kafka_bootstrap, producer, outputs, site, make_bundle, make_image, settings_for, run_service
) -> None:
    n = await _image_partitions(kafka_bootstrap)
    await _publish(producer, make_bundle("v1").deployed(site))
    settings = settings_for()
    async with run_service(settings) as first, run_service(settings) as second:
        a, b = first.state.assignment, second.state.assignment
        await asyncio.wait_for(
            a.wait_for(lambda mine: mine and b.partitions and len(mine | b.partitions) == n), 60
        )
        await asyncio.wait_for(b.wait_for(lambda mine: mine and not (mine & a.partitions)), 60)
        images = [make_image(site, cam) for cam in _cameras_covering(site, n, 3)]
        await _publish(producer, *images)
        await outputs.wait(lambda o: len(o.predictions) >= len(images))
        split = (first.state.stats.predictions, second.state.stats.predictions)
    assert Counter(p.image_id for p in outputs.predictions) == Counter(e.image_id for e in images)
    assert min(split) > 0


class BlockingStore(LocalBlobStore):
    """Blocks fetching one blob until released, so a batch can be interrupted mid-flight."""

    def __init__(self, inner: LocalBlobStore, blocked_uri: str) -> None:
        super().__init__(inner.root)
        self.blocked_uri = blocked_uri
        self.entered = threading.Event()
        self.release = threading.Event()

    def get(self, uri: str) -> bytes:
        if uri == self.blocked_uri:
            self.entered.set()
            self.release.wait(60)
        return super().get(uri)


async def test_inference_a_batch_interrupted_before_its_commit_is_redelivered_not_lost(
    producer, outputs, site, make_bundle, make_image, settings_for, run_service, store
) -> None:
    await _publish(producer, make_bundle("v1").deployed(site))
    images = [make_image(site, "cam-1") for _ in range(4)]  # one camera: one partition, in order
    blocking = BlockingStore(store, images[2].blob_uri)
    settings = settings_for(max_batch=16)
    async with run_service(settings, store=blocking) as crashed:
        await _publish(producer, *images)
        await asyncio.to_thread(blocking.entered.wait, 60)
        # "crash": the consuming task dies mid-batch, before anything was published or committed
        (subscriber,) = crashed.state.broker.subscribers
        for task in list(subscriber.tasks):
            task.cancel()
        await asyncio.gather(*subscriber.tasks, return_exceptions=True)
        blocking.release.set()
    assert images[2].image_id not in {p.image_id for p in outputs.predictions}
    async with run_service(settings):
        await outputs.wait(lambda o: len(o.predictions) >= len(images))
    assert Counter(p.image_id for p in outputs.predictions) == Counter(e.image_id for e in images)
