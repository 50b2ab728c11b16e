"""`defectloop bench e2e`: the whole path, camera POST to decision, against the naive baseline.

A skeleton of issue 14 §1 (one offered rate, one frame size). In one run, on one machine, with an
isolated Kafka broker and the real ingest and inference services (separate processes started by
the stack's supervisor under the run's work directory, on ports of their own, span export off):

1. **whole path** — simulated gateways POST unique gray8 PNGs (site A's scene, ``image_size``; with
   ``sites`` > 1, procedural factories ``S01``... each with the model deployed, in turn) to ingest
   over HTTP at ``rate`` per second, open loop (each POST is sent at its scheduled time, whatever
   earlier ones are doing; at most ``clients`` connections). An independent consumer reads
   ``prediction.made``; latency is from the *scheduled* send time to its receipt (so a slow
   server cannot hide queueing: no coordinated omission). Reported: images/s achieved, p50/p99,
   CPU seconds per image and peak RSS of each service process.
2. **naive baseline** — the pipeline a user would write first, on the very ``image.captured``
   events of phase 1: a plain consumer handling one message at a time (read, fetch the blob,
   decode, the same model at batch 1, publish ``prediction.made`` and wait for its ack, commit),
   in this process: images/s and CPU seconds per image.

With ``sites`` > 1 the bundle is deployed once per site, so inference holds one model per site
(its peak RSS is the memory of ``sites`` resident models), and the time from the deployments to
the first prediction of every site is reported.

Not yet (issue 14): sustained capacity search, 50 %/90 % loads, three frame sizes in one run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from pydantic import ValidationError

from defectloop.cli import supervisor
from defectloop.cli.bench_common import Progress, report_head, run_in_workdir, stop_all
from defectloop.cli.pipeline_bench import (
    _Arrivals,
    _cpu_seconds,
    _percentile,
    _wait_count,
    broker_for,
    deployment,
)
from defectloop.cli.processes import free_port
from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import (
    ImageCaptured,
    ModelRole,
    PredictionMade,
    image_id_for,
    sha256_hex,
)
from defectloop.common.kafka import build_broker, publish_event
from defectloop.common.kafka_read import TopicFollower


@dataclass(frozen=True)
class E2EConfig:
    bundle: Path
    rate: float = 4.0
    seconds: float = 20.0
    image_size: int = 512
    clients: int = 8
    cameras: int = 8
    site: str = "bench"
    sites: int = 1
    max_batch: int = 16
    bootstrap: str | None = None


@dataclass(frozen=True)
class _Frame:
    site: str
    camera: str
    png: bytes
    image_id: str


def _sites(cfg: E2EConfig) -> dict[str, str]:
    """Site id -> simulator profile: ``cfg.site`` filming site A, or one procedural factory
    per site (``<cfg.site>S01`` films ``S01``...)."""
    from defectloop.factory_sim import site_names

    if cfg.sites == 1:
        return {cfg.site: "A"}
    return {f"{cfg.site}{name}": name for name in site_names(cfg.sites)}


def _frames(cfg: E2EConfig, n: int) -> list[_Frame]:
    """``n`` unique frames (every one a new image id, as cameras send), the sites in turn."""
    from defectloop.factory_sim import encode_png, get_site, render

    sites = [
        (site_id, get_site(name).with_size(cfg.image_size)) for site_id, name in _sites(cfg).items()
    ]
    out = []
    for i in range(n):
        site_id, profile = sites[i % len(sites)]
        camera = f"cam-{i // len(sites) % cfg.cameras + 1}"
        png = encode_png(render(profile, i, seed=11).pixels)
        out.append(_Frame(site_id, camera, png, image_id_for(site_id, camera, sha256_hex(png))))
    return out


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _receiver(sites: set[str], arrivals: _Arrivals) -> Any:
    """prediction.made of ``sites``: image id -> receipt time (the champion's, first seen)."""

    def receive(record: ConsumerRecord[Any, Any]) -> None:
        now = time.time()
        p = PredictionMade.model_validate_json(record.value)
        if p.site_id not in sites or p.role != ModelRole.CHAMPION or p.image_id in arrivals.times:
            return
        arrivals.times[p.image_id] = now
        arrivals.changed.set()

    return receive


async def _post_open_loop(
    cfg: E2EConfig, url: str, tokens: dict[str, str], frames: list[_Frame], *, paced: bool = True
) -> tuple[dict[str, float], dict[int, int]]:
    """POST every frame at its scheduled time (``cfg.rate``; all at once unless ``paced``);
    (image id -> scheduled epoch s, status counts)."""
    scheduled: dict[str, float] = {}
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def post(frame: _Frame) -> None:
            resp = await client.post(
                f"/v1/sites/{frame.site}/cameras/{frame.camera}/images",
                content=frame.png,
                headers={
                    "Authorization": f"Bearer {tokens[frame.site]}",
                    "Content-Type": "image/png",
                },
            )
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1

        began = time.monotonic()
        tasks = []
        for i, frame in enumerate(frames):
            delay = began + i / cfg.rate - time.monotonic()
            if paced and delay > 0:
                await asyncio.sleep(delay)  # the load schedule itself, not synchronisation
            scheduled[frame.image_id] = time.time()
            tasks.append(asyncio.create_task(post(frame)))
        await asyncio.gather(*tasks)
    return scheduled, statuses


async def _naive(
    cfg: E2EConfig, bootstrap: str, store: LocalBlobStore, sites: set[str], n: int, say: Progress
) -> dict[str, Any]:
    """One message at a time: read, fetch, decode, model at batch 1, publish + ack, commit."""
    from defectloop.inference.pipeline import Executors, predict_events, single_model
    from defectloop.vision.runtime import Detector

    detector = Detector.from_bundle(cfg.bundle, providers="cpu", intra_op_threads=1)
    models = single_model(detector)
    executors = Executors(decode_workers=1)
    consumer = AIOKafkaConsumer(
        topics.IMAGE_CAPTURED,
        bootstrap_servers=bootstrap,
        group_id=f"naive-{os.getpid()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = build_broker(bootstrap, client_id="naive-producer")
    await consumer.start()
    await producer.start()
    try:
        done, began, cpu0 = 0, 0.0, time.process_time()
        while done < n:
            record = await consumer.getone()
            try:
                event = ImageCaptured.model_validate_json(record.value)
            except ValidationError:
                continue  # another producer's poison on a shared topic: not one of ours
            if event.site_id not in sites:
                continue
            if done == 0:  # the clock starts at the first image (not the group join)
                began, cpu0 = time.perf_counter(), time.process_time()
            result = await predict_events([event], store, models, executors)
            for prediction in result.predictions:
                await publish_event(producer, prediction)
            await consumer.commit()
            done += 1
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu0
        rate = (n - 1) / max(elapsed, 1e-9)
        say(f"naive: {rate:.1f} images/s")
        return {
            "images": n,
            "images_per_s": round(rate, 2),
            "cpu_seconds_per_image": round(cpu / max(n - 1, 1), 4),
            "peak_rss_mb_bench_process": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
        }
    finally:
        executors.shutdown()
        await consumer.stop()
        await producer.stop()


async def run_e2e(cfg: E2EConfig, workdir: Path, say: Progress) -> dict[str, Any]:
    from defectloop.ingest import tokens
    from defectloop.vision.manifest import load_manifest

    manifest = load_manifest(cfg.bundle)
    blobs = workdir / "blobs"
    store = LocalBlobStore(blobs)
    database_url = f"sqlite:///{workdir / 'ingest.db'}"
    layout, bootstrap = await broker_for(cfg.bootstrap, workdir, say)
    ingest = dataclasses.replace(supervisor.service("ingest"), port=free_port())
    inference = dataclasses.replace(supervisor.service("inference"), port=free_port())
    follower: TopicFollower | None = None
    producer = build_broker(bootstrap, client_id="bench-e2e")
    try:
        n = max(10, int(cfg.rate * cfg.seconds))
        sites = _sites(cfg)
        say(f"rendering {n + len(sites)} unique frames")
        frames = await asyncio.to_thread(_frames, cfg, n + len(sites))
        issued = {site: tokens.issue(site, database_url=database_url).token for site in sites}
        await producer.start()
        for site in sites:
            await publish_event(producer, deployment(site, cfg.bundle, manifest))
        arrivals = _Arrivals()
        follower = TopicFollower(
            bootstrap, topics.PREDICTION_MADE, _receiver(set(sites), arrivals), client_id="e2e-read"
        )
        await follower.start()
        say("starting ingest and inference")
        pids = {
            "ingest": supervisor.start_service(
                ingest,
                env={
                    "DEFECTLOOP_INGEST_KAFKA_BOOTSTRAP": bootstrap,
                    "DEFECTLOOP_INGEST_DATABASE_URL": database_url,
                    "DEFECTLOOP_INGEST_BLOB_URL": blobs.as_uri(),
                },
                home=workdir,
                traces=False,
            ),
            "inference": supervisor.start_service(
                inference,
                env={
                    "DEFECTLOOP_INFERENCE_KAFKA_BOOTSTRAP": bootstrap,
                    "DEFECTLOOP_INFERENCE_BLOB_URL": blobs.as_uri(),
                    "DEFECTLOOP_INFERENCE_GROUP_ID": f"e2e-{os.getpid()}",
                    "DEFECTLOOP_INFERENCE_MAX_BATCH": str(cfg.max_batch),
                },
                home=workdir,
                traces=False,
            ),
        }
        for spec in (ingest, inference):
            await asyncio.to_thread(supervisor.wait_healthy, spec, 120.0, workdir)
        url = f"http://127.0.0.1:{ingest.port}"
        say(f"warm-up: one frame of each of {len(sites)} sites through the whole path")
        warm_began = time.monotonic()
        await _post_open_loop(cfg, url, issued, frames[: len(sites)], paced=False)
        await _wait_count(arrivals, len(sites), 180 + 10 * len(sites), follower)
        warmup_s = time.monotonic() - warm_began
        rss_after_warmup = _peak_rss_mb(pids["inference"])

        cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        say(f"whole path: {n} frames at {cfg.rate} images/s, open loop")
        began = time.time()
        scheduled, statuses = await _post_open_loop(cfg, url, issued, frames[len(sites) :])
        accepted = statuses.get(202, 0)
        await _wait_count(arrivals, len(sites) + accepted, 60 + n / cfg.rate, follower)
        cpu1 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
        last = max(arrivals.times[i] for i in scheduled if i in arrivals.times)
        latency = [
            (arrivals.times[i] - t) * 1000 for i, t in scheduled.items() if i in arrivals.times
        ]
        p50, p99 = _percentile(latency, 50), _percentile(latency, 99)
        whole = {
            "offered_images_per_s": cfg.rate,
            "images": n,
            "http_statuses": {str(k): v for k, v in sorted(statuses.items())},
            "predicted": len(latency),
            "achieved_images_per_s": round(len(latency) / max(last - began, 1e-9), 2),
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "p99_over_p50": round(p99 / p50, 2),
            "cpu_seconds_per_image": {
                name: round((cpu1[name] - cpu0[name]) / max(accepted, 1), 4) for name in pids
            },
            "peak_rss_mb": {name: _peak_rss_mb(pid) for name, pid in pids.items()},
        }
        fleet = {
            "sites": len(sites),
            "warmup_s_first_prediction_of_every_site": round(warmup_s, 2),
            "inference_peak_rss_mb_after_warmup": rss_after_warmup,
        }
        say(f"whole path: p50 {p50:.0f} ms, p99 {p99:.0f} ms")
        naive = await _naive(cfg, bootstrap, store, set(sites), len(sites) + accepted, say)
        return {
            **report_head(
                "defectloop bench e2e", cfg, manifest, loadavg=round(os.getloadavg()[0], 2)
            ),
            "whole_path": whole,
            "fleet": fleet,
            "naive_baseline": naive,
        }
    finally:
        await stop_all(workdir, layout, follower, producer, ingest, inference)


def markdown(report: dict[str, Any]) -> str:
    whole, naive, fleet = report["whole_path"], report["naive_baseline"], report["fleet"]
    cpu = cast(dict[str, float], whole["cpu_seconds_per_image"])
    rss = cast(dict[str, float], whole["peak_rss_mb"])
    rows = [
        "| metric | value |",
        "|---|---|",
        f"| offered (open loop, {report['config']['image_size']}² gray8) | "
        f"{whole['offered_images_per_s']} images/s, {whole['images']} frames |",
        f"| whole path achieved | {whole['achieved_images_per_s']} images/s |",
        f"| POST → prediction.made p50 / p99 / p99÷p50 | {whole['p50_ms']} ms / "
        f"{whole['p99_ms']} ms / {whole['p99_over_p50']} |",
        f"| CPU s per image: ingest / inference | {cpu['ingest']} / {cpu['inference']} |",
        f"| peak RSS MB: ingest / inference | {rss['ingest']} / {rss['inference']} |",
        f"| sites (a model each): first prediction of every site / inference RSS after | "
        f"{fleet['sites']}: {fleet['warmup_s_first_prediction_of_every_site']} s / "
        f"{fleet['inference_peak_rss_mb_after_warmup']} MB |",
        f"| naive baseline (one message at a time, batch 1) | {naive['images_per_s']} images/s, "
        f"{naive['cpu_seconds_per_image']} CPU s per image |",
    ]
    return "\n".join(rows) + "\n"


def run(cfg: E2EConfig, say: Progress, workdir: Path | None = None) -> dict[str, Any]:
    return run_in_workdir(run_e2e, cfg, say, workdir, prefix="defectloop-e2e-")
