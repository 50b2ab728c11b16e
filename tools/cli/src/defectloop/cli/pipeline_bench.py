"""`defectloop bench pipeline`: the inference service's own code, raw versus through Kafka.

In one run, on one machine, against an isolated Kafka broker started for the run:

1. **raw** — the service's decode + inference code (``predict_events``) on pre-formed batches of
   ``max_batch`` images read from the same blob store, no Kafka: images/s.
2. **pipeline** — a pre-filled ``image.captured`` backlog drained by the real inference service (a
   separate process, started by the stack's supervisor under the run's work directory, on a port
   of its own, span export off) into ``prediction.made``: images/s over the steady part of the
   drain (10th to 90th percentile of arrivals), CPU seconds per image of the service process.
3. **latency** — open-loop offered load at 50 % and 90 % of the measured pipeline peak: end-to-end
   latency (publish of ``image.captured`` → receipt of ``prediction.made``) p50/p99, and the
   backlog's slope (flat = the service keeps up).

``efficiency = pipeline / raw``. Batch sizes the service formed come from its ``/v1/models``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import numpy as np
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker

from defectloop.cli import kafka_local, supervisor
from defectloop.cli.bench_common import Progress, report_head, run_in_workdir, stop_all
from defectloop.cli.processes import free_port
from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.errors import ComponentError
from defectloop.common.events import (
    ImageCaptured,
    ModelDeployed,
    ModelRole,
    PredictionMade,
    QualityMetrics,
    deterministic_id,
    sha256_hex,
)
from defectloop.common.kafka import build_broker, enqueue_event, publish_event, publish_events
from defectloop.common.kafka_read import TopicFollower

if TYPE_CHECKING:
    from defectloop.vision.manifest import BundleManifest


@dataclass(frozen=True)
class BenchConfig:
    bundle: Path
    duration_s: float = 60.0
    max_batch: int = 16
    max_wait_ms: int = 10
    decode_workers: int = 1
    intra_op_threads: int = 1
    providers: str = "cpu"
    distinct_images: int = 32
    image_size: int = 512
    partitions: int = 6
    site: str = "bench"
    bootstrap: str | None = None


@dataclass
class _Arrivals:
    """prediction.made receipts of the bench site: prediction_id -> receive time (epoch s)."""

    times: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def _images(cfg: BenchConfig, store: LocalBlobStore) -> list[tuple[str, str, int, int]]:
    from defectloop.factory_sim import encode_png, get_site, render

    site = get_site("A").with_size(cfg.image_size)
    out = []
    for i in range(cfg.distinct_images):
        png = encode_png(render(site, i, seed=7).pixels)
        out.append((sha256_hex(png), store.put(png, suffix=".png"), site.width, site.height))
    return out


def _event(cfg: BenchConfig, images: list[tuple[str, str, int, int]], n: int) -> ImageCaptured:
    sha, uri, w, h = images[n % len(images)]
    return ImageCaptured(
        site_id=cfg.site,
        camera_id=f"cam-{n % 8}",
        image_id=deterministic_id("bench", cfg.site, str(n)),
        sha256=sha,
        blob_uri=uri,
        captured_at=datetime.now(UTC),
        width=w,
        height=h,
        quality=QualityMetrics(sharpness=100.0, brightness=128.0, contrast=30.0, uniform=False),
    )


async def _raw(cfg: BenchConfig, store: LocalBlobStore, images: list[Any], seconds: float) -> float:
    from defectloop.inference.pipeline import Executors, predict_events, single_model
    from defectloop.vision.runtime import Detector, ProviderChoice

    # A bad choice is refused by select_providers with a clear error; the cast only narrows.
    providers = cast(ProviderChoice, cfg.providers)
    detector = Detector.from_bundle(
        cfg.bundle, providers=providers, intra_op_threads=cfg.intra_op_threads
    )
    executors = Executors(decode_workers=cfg.decode_workers)
    models = single_model(detector)
    try:
        batch = [_event(cfg, images, i) for i in range(cfg.max_batch)]
        await predict_events(batch, store, models, executors)  # warm-up: first Run() is slower
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            result = await predict_events(batch, store, models, executors)
            done += result.images_predicted
        return done / (time.perf_counter() - began)
    finally:
        executors.shutdown()


def _prediction_receiver(
    site: str, arrivals: _Arrivals
) -> Callable[[ConsumerRecord[Any, Any]], None]:
    """Records the receipt time of each new prediction of ``site`` (from prediction.made)."""

    def receive(record: ConsumerRecord[Any, Any]) -> None:
        now = time.time()
        p = PredictionMade.model_validate_json(record.value)
        if p.site_id != site or p.prediction_id in arrivals.times:
            return
        arrivals.times[p.prediction_id] = now
        arrivals.latency_ms[p.image_id] = (now - p.occurred_at.timestamp()) * 1000
        arrivals.changed.set()

    return receive


async def _wait_count(
    arrivals: _Arrivals, n: int, timeout_s: float, follower: TopicFollower
) -> None:
    deadline = time.monotonic() + timeout_s
    while len(arrivals.times) < n:
        if not follower.running:
            raise ComponentError(
                "the prediction.made follower stopped", hint="see the follow_failed log line"
            )
        left = deadline - time.monotonic()
        if left <= 0:
            raise ComponentError(
                f"only {len(arrivals.times)}/{n} predictions arrived in {timeout_s:.0f} s",
                hint="see the inference log in the bench work dir",
            )
        arrivals.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrivals.changed.wait(), min(left, 5.0))


async def _open_loop(
    producer: KafkaBroker,
    make: Callable[[int], ImageCaptured],
    start: int,
    rate: float,
    seconds: float,
) -> list[str]:
    """Publish at ``rate``/s on a fixed schedule (not waiting for the service): open-loop load."""
    sent: list[str] = []
    futures: list[Awaitable[Any]] = []
    began = time.monotonic()
    n = int(rate * seconds)
    for i in range(n):
        due = began + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the load schedule itself, not synchronisation
        event = make(start + i)
        futures.append(await enqueue_event(producer, event))
        sent.append(event.image_id)
    await asyncio.gather(*futures)
    return sent


@dataclass(frozen=True)
class _Phase:
    rate: float
    seconds: float


async def _latency_phase(
    producer: KafkaBroker,
    make: Callable[[int], ImageCaptured],
    start: int,
    phase: _Phase,
    arrivals: _Arrivals,
    follower: TopicFollower,
) -> dict[str, Any]:
    """Offer ``phase.rate`` images/s open-loop; latency percentiles and the backlog's trend."""
    before = len(arrivals.times)
    lag: list[tuple[float, int]] = []
    began = time.monotonic()

    async def sample_lag() -> None:
        while True:
            await asyncio.sleep(0.5)  # sampling cadence of the lag gauge
            elapsed = time.monotonic() - began
            published = min(int(phase.rate * elapsed), int(phase.rate * phase.seconds))
            lag.append((elapsed, published - (len(arrivals.times) - before)))

    sampler = asyncio.create_task(sample_lag())
    sent = await _open_loop(producer, make, start, phase.rate, phase.seconds)
    sampler.cancel()
    await _wait_count(arrivals, before + len(sent), 120, follower)
    lat = [arrivals.latency_ms[i] for i in sent if i in arrivals.latency_ms]
    xs = np.asarray([t for t, _ in lag] or [0.0])
    ys = np.asarray([q for _, q in lag] or [0])
    slope = float(np.polyfit(xs, ys, 1)[0]) if len(lag) > 2 else 0.0
    p50, p99 = _percentile(lat, 50), _percentile(lat, 99)
    return {
        "offered_images_per_s": round(phase.rate, 2),
        "images": len(sent),
        "p50_ms": round(p50, 1),
        "p99_ms": round(p99, 1),
        "p99_over_p50": round(p99 / p50, 2),
        "backlog_slope_images_per_s": round(slope, 3),
        "backlog_max": int(ys.max()),
    }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def broker_for(
    bootstrap: str | None, workdir: Path, say: Progress, *, partitions: int = 6
) -> tuple[kafka_local.KafkaLayout | None, str]:
    """``bootstrap`` if given, else an isolated broker started under ``workdir`` (its layout, to
    stop it, and its address)."""
    if bootstrap is not None:
        return None, bootstrap
    layout = kafka_local.KafkaLayout(
        workdir / "kafka", port=free_port(), controller_port=free_port()
    )
    say("starting an isolated Kafka broker")
    await asyncio.to_thread(kafka_local.start, layout, partitions=partitions)
    return layout, layout.bootstrap


def deployment(site: str, bundle: Path, manifest: BundleManifest) -> ModelDeployed:
    """The ``model.deployed`` that makes ``bundle`` the champion of ``site``."""
    return ModelDeployed(
        site_id=site,
        role=ModelRole.CHAMPION,
        model_name=manifest.name,
        model_version=manifest.version,
        artifact_uri=str(bundle.resolve()),
        sha256=manifest.sha256,
    )


async def run_bench(cfg: BenchConfig, workdir: Path, say: Progress) -> dict[str, Any]:
    from defectloop.vision.manifest import load_manifest

    manifest = load_manifest(cfg.bundle)
    store = LocalBlobStore(workdir / "blobs")
    layout, bootstrap = await broker_for(cfg.bootstrap, workdir, say, partitions=cfg.partitions)
    service = dataclasses.replace(supervisor.service("inference"), port=free_port())
    follower: TopicFollower | None = None
    producer = build_broker(bootstrap, client_id="bench-producer")
    try:
        say("rendering images into the blob store")
        images = await asyncio.to_thread(_images, cfg, store)
        say("raw: the service's decode + inference code on pre-formed batches")
        raw_rate = await _raw(cfg, store, images, max(5.0, cfg.duration_s * 0.2))
        say(f"raw: {raw_rate:.1f} images/s")

        await producer.start()
        await publish_event(producer, deployment(cfg.site, cfg.bundle, manifest))
        n_backlog = max(200, int(raw_rate * cfg.duration_s * 0.3))
        say(f"pipeline: pre-filling a backlog of {n_backlog} image.captured events")
        await publish_events(producer, [_event(cfg, images, i) for i in range(n_backlog)])

        arrivals = _Arrivals()
        follower = TopicFollower(
            bootstrap,
            topics.PREDICTION_MADE,
            _prediction_receiver(cfg.site, arrivals),
            client_id="bench-receipts",
        )
        await follower.start()
        env = {
            "DEFECTLOOP_INFERENCE_KAFKA_BOOTSTRAP": bootstrap,
            "DEFECTLOOP_INFERENCE_BLOB_URL": store.root.as_uri(),
            "DEFECTLOOP_INFERENCE_GROUP_ID": f"bench-{os.getpid()}",
            "DEFECTLOOP_INFERENCE_MAX_BATCH": str(cfg.max_batch),
            "DEFECTLOOP_INFERENCE_MAX_WAIT_MS": str(cfg.max_wait_ms),
            "DEFECTLOOP_INFERENCE_DECODE_WORKERS": str(cfg.decode_workers),
            "DEFECTLOOP_INFERENCE_INTRA_OP_THREADS": str(cfg.intra_op_threads),
            "DEFECTLOOP_INFERENCE_PROVIDERS": cfg.providers,
        }
        say("pipeline: starting the inference service and draining the backlog")
        pid = supervisor.start_service(service, env=env, home=workdir, traces=False)
        await _wait_count(arrivals, 1, 180, follower)
        cpu0, t_first = _cpu_seconds(pid), time.time()
        await _wait_count(arrivals, n_backlog, 60 + n_backlog / max(raw_rate * 0.2, 1.0), follower)
        cpu1, t_last = _cpu_seconds(pid), max(arrivals.times.values())
        times = sorted(arrivals.times.values())
        t10, t90 = times[int(0.1 * len(times))], times[int(0.9 * len(times)) - 1]
        pipeline_rate = (int(0.9 * len(times)) - int(0.1 * len(times))) / max(t90 - t10, 1e-9)
        cpu_per_image = (cpu1 - cpu0) / max(n_backlog - 1, 1)
        say(f"pipeline: {pipeline_rate:.1f} images/s (efficiency {pipeline_rate / raw_rate:.2f})")

        loads: dict[str, Any] = {}
        next_index = n_backlog
        for share in (0.5, 0.9):
            phase = _Phase(rate=share * pipeline_rate, seconds=max(5.0, cfg.duration_s * 0.25))
            say(f"latency: open-loop {phase.rate:.1f} images/s ({share:.0%} of peak)")
            loads[f"{int(share * 100)}pct"] = await _latency_phase(
                producer, lambda i: _event(cfg, images, i), next_index, phase, arrivals, follower
            )
            next_index += loads[f"{int(share * 100)}pct"]["images"]

        async with httpx.AsyncClient() as client:
            resp = await client.get(f"http://127.0.0.1:{service.port}/v1/models", timeout=10)
        stats = resp.json().get("stats", {})
        return {
            **report_head(
                "defectloop bench pipeline", cfg, manifest, python=platform.python_version()
            ),
            "image_size": [cfg.image_size, cfg.image_size],
            "raw_images_per_s": round(raw_rate, 2),
            "pipeline_images_per_s": round(pipeline_rate, 2),
            "efficiency": round(pipeline_rate / raw_rate, 3),
            "backlog_images": n_backlog,
            "cpu_seconds_per_image": round(cpu_per_image, 4),
            "drain_seconds": round(t_last - t_first, 2),
            "latency": loads,
            "batch_size_histogram": stats.get("batch_sizes", {}),
        }
    finally:
        await stop_all(workdir, layout, follower, producer, service)


def markdown(report: dict[str, Any]) -> str:
    lat = report["latency"]
    rows = [
        "| metric | value |",
        "|---|---|",
        f"| raw images/s (decode + inference, batch {report['config']['max_batch']}) | {report['raw_images_per_s']} |",
        f"| pipeline images/s (Kafka → inference → Kafka) | {report['pipeline_images_per_s']} |",
        f"| efficiency (pipeline / raw) | {report['efficiency']} |",
        f"| CPU seconds per image (service process) | {report['cpu_seconds_per_image']} |",
    ]
    for key, row in lat.items():
        rows.append(
            f"| {key} load ({row['offered_images_per_s']} img/s): p50 / p99 / p99÷p50 | "
            f"{row['p50_ms']} ms / {row['p99_ms']} ms / {row['p99_over_p50']} |"
        )
        rows.append(
            f"| {key} load: backlog slope (images/s), max | {row['backlog_slope_images_per_s']}, {row['backlog_max']} |"
        )
    rows.append(f"| batch sizes formed (size: count) | {report['batch_size_histogram']} |")
    return "\n".join(rows) + "\n"


def run(cfg: BenchConfig, say: Progress, workdir: Path | None = None) -> dict[str, Any]:
    return run_in_workdir(run_bench, cfg, say, workdir, prefix="defectloop-bench-")


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
