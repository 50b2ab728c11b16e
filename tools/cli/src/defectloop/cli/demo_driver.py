"""`defectloop demo`: a fresh stack in its own state directory, the closed-loop scenario, the
report. The e2e test calls :func:`run_demo` too, with its own ports, directory and smaller knobs."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown

from defectloop.cli import closed_loop, demo_report, labelstudio_local, supervisor
from defectloop.cli.processes import free_port, port_open
from defectloop.common.errors import ComponentError
from defectloop.common.paths import cache_home, state_home

console = Console()


@dataclass(frozen=True)
class DemoPorts:
    """Where the demo's stack listens (the defaults are the stack's usual ports)."""

    kafka: int = 9092
    label_studio: int = labelstudio_local.DEFAULT_PORT
    zipkin: int = 9411
    services: dict[str, int] = field(default_factory=dict)


def scenario(*, quick: bool, drift: Sequence[str] | None) -> closed_loop.DemoConfig:
    base = closed_loop.DemoConfig.quick() if quick else closed_loop.DemoConfig.full()
    return base.with_drifts(drift)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """This process's view of the demo's stack (state home, ports), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _gone_is_fine(function: Callable[..., object], path: str, exc_info: tuple[Any, ...]) -> None:
    error = exc_info[1]
    if not isinstance(error, FileNotFoundError):
        raise error


def _refuse_taken_ports(ports: DemoPorts, specs: Sequence[supervisor.ServiceSpec]) -> None:
    taken = [f"{s.name}:{s.port}" for s in specs if port_open(s.port)]
    taken += [f"kafka:{ports.kafka}"] * port_open(ports.kafka)
    taken += [f"label-studio:{ports.label_studio}"] * port_open(ports.label_studio)
    taken += [f"zipkin:{ports.zipkin}"] * port_open(ports.zipkin)
    if taken:
        raise ComponentError(
            f"the demo needs its ports, taken now: {', '.join(taken)}",
            hint="`defectloop down` stops a stack started by `defectloop up`",
        )


def _label_studio_template() -> Path:
    """A migrated, empty Label Studio home (data dir + admin credentials), made once, cached.

    Label Studio's first start in a new data directory runs its migrations (minutes on a busy
    CPU); every demo starts a fresh stack, so it copies this instead of migrating again.
    """
    from filelock import FileLock

    template = cache_home() / f"labelstudio-template-{labelstudio_local.LABEL_STUDIO_VERSION}"
    with FileLock(f"{template}.lock"):
        if not (template / "ready").is_file():
            shutil.rmtree(template, ignore_errors=True)
            layout = labelstudio_local.LabelStudioLayout(template, port=free_port())
            with console.status("Label Studio's first start (migrations, once: ~2 min)..."):
                labelstudio_local.start(layout, timeout_s=600)
                labelstudio_local.stop(layout)
            for name in ("labelstudio.pid", "labelstudio.log", "info.json"):
                (template / name).unlink(missing_ok=True)
            (template / "ready").write_text("migrated\n")
    return template


def _seed_label_studio(home: Path) -> None:
    target = labelstudio_local.default_layout().home
    shutil.copytree(_label_studio_template(), target, ignore=shutil.ignore_patterns("ready"))


def run_demo(
    config: closed_loop.DemoConfig,
    *,
    report: Path | None,
    keep: bool = False,
    home: Path | None = None,
    ports: DemoPorts | None = None,
    live: bool = True,
) -> dict[str, Any]:
    """Start a fresh stack under ``home`` (default ``<state>/demo``, wiped first), run the
    scenario, write the report; stop the stack unless ``keep``. Returns the report."""
    from defectloop.cli.stack import stack_down, stack_up

    ports = ports or DemoPorts()
    home = (home or state_home() / "demo").resolve()
    specs = supervisor.stack_services(ports.services)
    env = {
        "DEFECTLOOP_HOME": str(home),
        "DEFECTLOOP_KAFKA_PORT": str(ports.kafka),
        "DEFECTLOOP_LABELSTUDIO_PORT": str(ports.label_studio),
        "DEFECTLOOP_ZIPKIN_PORT": str(ports.zipkin),
        "DEFECTLOOP_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports.kafka}",
    }
    url = {s.name: f"http://127.0.0.1:{s.port}" for s in specs}
    with _environment(env):
        if home.exists():  # a previous demo kept running (--keep): stop it, start afresh
            stack_down(specs)
            # A process of the old stack may still be closing a file (a SQLite -shm): what
            # vanishes while we delete it is gone anyway.
            shutil.rmtree(home, onerror=_gone_is_fine)
        _refuse_taken_ports(ports, specs)
        home.mkdir(parents=True)
        _seed_label_studio(home)
        console.rule(f"defectloop demo ({config.name}): state in {home}")
        console.print(
            "[dim]Each site needs a bootstrap model; the first run trains the missing ones "
            "(a few minutes each on a CPU, cached for every later run).[/dim]"
        )
        try:
            stack_up(
                list(config.sites),
                services=specs,
                service_env=config.service_env(url["monitor"]),
            )
            studio = labelstudio_local.default_layout()
            endpoints = closed_loop.Endpoints(
                ingest_url=url["ingest"],
                monitor_url=url["monitor"],
                trainer_url=url["trainer"],
                label_studio_url=studio.url,
                label_studio_token=labelstudio_local.credentials(studio)["token"],
                truth_path=home / "sim" / "truth.jsonl",
                work_dir=home / "demo",
            )
            console.rule(
                f"baseline {config.baseline_s:.0f} s, then: "
                + ", ".join(d.spec for d in config.drifts)
            )
            if live:
                from defectloop.cli.demo_view import LiveView

                with LiveView(config) as view:
                    tracks, began = asyncio.run(
                        closed_loop.run_scenario(config, endpoints, view=view)
                    )
            else:
                tracks, began = asyncio.run(closed_loop.run_scenario(config, endpoints))
            result = demo_report.build_report(
                config, tracks, began, time.time(), endpoints.monitor_url
            )
            if report is not None:
                md = demo_report.write_report(report, result)
                console.print(f"report: {report} and {md}")
            console.print(Markdown(demo_report.markdown(result).split("\n## Events")[0]))
            if keep:
                console.print(
                    f"the stack keeps running (state in {home}): "
                    f"DEFECTLOOP_HOME={home} defectloop down stops it"
                )
            return result
        finally:
            if not keep:
                stack_down(specs)
            console.print(f"logs: {supervisor.log_dir(home)}")
