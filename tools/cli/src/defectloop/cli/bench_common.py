"""What the benchmarks of ``defectloop bench`` share: running one in a work directory, the head
of its JSON report, and stopping what it started."""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from defectloop.cli import kafka_local, supervisor

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

    from defectloop.common.kafka_read import TopicFollower
    from defectloop.vision.manifest import BundleManifest

C = TypeVar("C")
Progress = Callable[[str], None]


def run_in_workdir(
    main: Callable[[C, Path, Progress], Coroutine[Any, Any, dict[str, Any]]],
    cfg: C,
    say: Progress,
    workdir: Path | None,
    *,
    prefix: str,
) -> dict[str, Any]:
    """``main(cfg, workdir, say)`` to completion, in ``workdir`` (created if missing) or, without
    one, in a temporary directory removed afterwards."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return asyncio.run(main(cfg, Path(tmp), say))
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(main(cfg, workdir, say))


def report_head(
    command: str, cfg: object, manifest: BundleManifest, **machine: object
) -> dict[str, Any]:
    """The first keys of a benchmark report: the command, its configuration (paths as text), the
    machine (CPUs, platform and ``machine``) and the model measured."""
    return {
        "command": command,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **machine},
        "model": {
            "name": manifest.name,
            "version": manifest.version,
            "input_size": list(manifest.preprocessing.input_size),
        },
    }


async def stop_all(
    workdir: Path,
    layout: kafka_local.KafkaLayout | None,
    follower: TopicFollower | None,
    producer: KafkaBroker,
    *services: supervisor.ServiceSpec,
) -> None:
    """Stop what a benchmark started, in this order: its reader, its producer, the services (run
    under ``workdir``) and the broker it started (``layout``; none when it used a given one)."""
    if follower is not None:
        await follower.stop()
    await producer.stop()
    for spec in services:
        await asyncio.to_thread(supervisor.stop_service, spec, 30.0, workdir)
    if layout is not None:
        await asyncio.to_thread(kafka_local.stop, layout)
