"""`defectloop bench faults`: the stack under a fault schedule, then an independent checker.

An isolated broker (its own ports and data) and the services as real processes (the
supervisor's, under the run's own work directory) serve one site. Simulated gateways offer N
images and retry each with the **same bytes** until ingest answers (202, or a 4xx that is final),
while a schedule injects faults: ``inference:kill`` (``kill -9``), ``ingest:restart`` (SIGTERM),
``kafka:restart`` (the broker ``kill -9``'d, then started again on the same data). One poison
record is produced on ``image.captured`` at the start (what the DLQ must hold, and only that).

Afterwards the checker (:mod:`defectloop.cli.faults_check`) reads the topics with its own client
and judges: every acknowledged image has exactly one champion decision (one ``decision_id``),
none is lost, the DLQs hold only the injected poison, the consumer group's lag is back to 0.

Not covered yet (docs/reliability.md): Label Studio down, annotation-sync and the monitor under
faults, a broker SIGSTOP, a rebalance by a second inference instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer

from defectloop.cli import kafka_local, supervisor
from defectloop.cli.processes import alive, free_port
from defectloop.common.errors import InvalidInputError

TARGETS = ("inference", "ingest", "kafka")
ACTIONS = ("kill", "restart")
POISON_KEY = "faultbench/poison"
CAMERAS = 4

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: ``target:action:at_s`` (seconds after the gateways start)."""

    target: str
    action: str
    at_s: float

    @classmethod
    def parse(cls, text: str) -> Fault:
        parts = text.split(":")
        if len(parts) != 3:
            raise InvalidInputError(
                f"fault {text!r} is not target:action:seconds",
                hint="e.g. --fault inference:kill:20 --fault kafka:restart:40",
            )
        target, action, at = parts
        if target not in TARGETS or action not in ACTIONS:
            raise InvalidInputError(
                f"fault {text!r}: unknown target or action",
                hint=f"targets {', '.join(TARGETS)}; actions {', '.join(ACTIONS)}",
            )
        try:
            at_s = float(at)
        except ValueError:
            raise InvalidInputError(
                f"fault {text!r}: {at!r} is not a number of seconds", hint="e.g. inference:kill:20"
            ) from None
        if at_s < 0:
            raise InvalidInputError(f"fault {text!r}: negative time", hint="seconds after start")
        return cls(target, action, at_s)

    def __str__(self) -> str:
        return f"{self.target}:{self.action}:{self.at_s:g}"


DEFAULT_SCHEDULE = (
    "inference:kill:15",
    "kafka:restart:35",
    "inference:kill:60",
    "ingest:restart:80",
)
QUICK_SCHEDULE = ("inference:kill:4", "kafka:restart:9", "ingest:restart:15")


@dataclass
class FaultOutcome:
    fault: str
    at_s: float
    recovery_s: float | None = None
    error: str | None = None
    lost: int = 0
    duplicates: int = 0


@dataclass
class Offer:
    """One image offered by a gateway: what ingest finally answered, and when."""

    index: int
    camera: str
    attempts: int = 0
    status: int | None = None
    image_id: str | None = None
    reason: str | None = None
    acked_at_s: float | None = None


@dataclass
class FaultsConfig:
    bundle: Path
    workdir: Path
    images: int = 2000
    duration_s: float = 100.0
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    gateways: int = 4
    give_up_s: float = 120.0
    settle_s: float = 120.0


def _frame(index: int) -> bytes:
    from defectloop.factory_sim import encode_png, get_site, render

    return bytes(encode_png(render(get_site("A"), index, seed=11).pixels))


class Stack:
    """An isolated broker and the ingest + inference processes of one run."""

    def __init__(self, workdir: Path, say: Progress) -> None:
        self.home = workdir / "state"
        self.say = say
        self.layout = kafka_local.KafkaLayout(
            workdir / "kafka", port=free_port(), controller_port=free_port()
        )
        self.specs = {
            s.name: s
            for s in supervisor.stack_services({"ingest": free_port(), "inference": free_port()})
            if s.name in ("ingest", "inference")
        }
        self.ingest_db = f"sqlite:///{workdir / 'ingest.db'}"
        self.env = {
            "DEFECTLOOP_KAFKA_BOOTSTRAP": self.layout.bootstrap,
            "DEFECTLOOP_BLOB_URL": (workdir / "blobs").as_uri(),
            "DEFECTLOOP_INGEST_DATABASE_URL": self.ingest_db,
            "DEFECTLOOP_INFERENCE_DATABASE_URL": f"sqlite:///{workdir / 'inference.db'}",
            "DEFECTLOOP_INFERENCE_PROVIDERS": "cpu",
            "DEFECTLOOP_INGEST_RATE_LIMIT_PER_TOKEN": "100000/second",
            "DEFECTLOOP_INGEST_RATE_LIMIT_PER_SITE": "100000/second",
        }

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.specs['ingest'].port}"

    def start(self) -> None:
        self.say(f"starting an isolated Kafka broker on {self.layout.bootstrap}")
        kafka_local.start(self.layout, partitions=3)
        for spec in self.specs.values():  # both start at once, then both are waited for
            supervisor.start_service(spec, env=self.env, home=self.home, traces=False)
        for spec in self.specs.values():
            supervisor.wait_healthy(spec, timeout_s=120, home=self.home)

    def start_service(self, name: str) -> None:
        spec = self.specs[name]
        supervisor.start_service(spec, env=self.env, home=self.home, traces=False)
        supervisor.wait_healthy(spec, timeout_s=120, home=self.home)

    def pid(self, name: str) -> int | None:
        if name == "kafka":
            return kafka_local.read_pid(self.layout)
        return supervisor.service_pid(self.specs[name], self.home)

    def kill(self, name: str) -> None:
        """``kill -9``, and reap it (a zombie would still look alive to the pid file check)."""
        pid = self.pid(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)  # the kernel tearing the process down

    def inject(self, fault: Fault) -> float:
        """Apply ``fault``; return the seconds until everything answers healthy again."""
        started = time.monotonic()
        if fault.target == "kafka":
            self.kill("kafka")  # restart = kill -9 then start on the same data
            kafka_local.start(self.layout, partitions=3)
        elif fault.action == "kill":
            self.kill(fault.target)
            self.start_service(fault.target)
        else:
            supervisor.stop_service(self.specs[fault.target], home=self.home)
            self.start_service(fault.target)
        for spec in self.specs.values():
            supervisor.wait_healthy(spec, timeout_s=180, home=self.home)
        return time.monotonic() - started

    def stop(self) -> None:
        for spec in self.specs.values():
            supervisor.stop_service(spec, home=self.home)
        kafka_local.stop(self.layout)


def _deploy_and_poison(stack: Stack, site: str, bundle: Path) -> None:
    from defectloop.cli.pipeline_bench import deployment
    from defectloop.common.kafka import build_broker, publish_event
    from defectloop.common.topics import IMAGE_CAPTURED
    from defectloop.vision.manifest import load_manifest

    async def run() -> None:
        producer = build_broker(stack.layout.bootstrap, client_id="faults-bench")
        await producer.start()
        try:
            await publish_event(producer, deployment(site, bundle, load_manifest(bundle)))
            await producer.publish(
                b"\x00 not an event", topic=IMAGE_CAPTURED, key=POISON_KEY.encode()
            )
        finally:
            await producer.stop()

    asyncio.run(run())


def _offer_all(
    cfg: FaultsConfig, url: str, site: str, token: str, t0: float, offers: list[Offer]
) -> None:
    """The gateways: each offers its share at a steady pace, retrying with the same bytes."""
    interval = cfg.duration_s * cfg.gateways / max(cfg.images, 1)

    def gateway(g: int) -> None:
        with httpx.Client(timeout=15) as client:
            for i in range(g, cfg.images, cfg.gateways):
                offer = offers[i]
                due = t0 + (i // cfg.gateways) * interval
                time.sleep(max(0.0, due - time.monotonic()))  # the offered load's pace
                body = _frame(i)
                give_up = time.monotonic() + cfg.give_up_s
                while time.monotonic() < give_up:
                    offer.attempts += 1
                    try:
                        resp = client.post(
                            f"{url}/v1/sites/{site}/cameras/{offer.camera}/images",
                            content=body,
                            headers={
                                "Authorization": f"Bearer {token}",
                                "Content-Type": "image/png",
                            },
                        )
                    except httpx.HTTPError:
                        time.sleep(0.5)  # retry backoff of a gateway, not synchronisation
                        continue
                    if resp.status_code in (429, 502, 503, 504) or resp.status_code >= 500:
                        time.sleep(0.5)
                        continue
                    offer.status = resp.status_code
                    answer = resp.json()
                    offer.image_id = answer.get("image_id")
                    offer.reason = answer.get("error")
                    offer.acked_at_s = time.monotonic() - t0
                    break

    threads = [
        threading.Thread(target=gateway, args=(g,), daemon=True) for g in range(cfg.gateways)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_faults(cfg: FaultsConfig, say: Progress) -> dict[str, Any]:
    """Run the stack under ``cfg.faults`` while N images are offered; return the report."""
    from defectloop.cli import faults_check
    from defectloop.ingest import tokens

    cfg.workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(cfg.workdir, say)
    site = "faults" + uuid.uuid4().hex[:6]
    offers = [Offer(i, f"cam-{i % CAMERAS}") for i in range(cfg.images)]
    outcomes = [FaultOutcome(str(f), f.at_s) for f in sorted(cfg.faults, key=lambda f: f.at_s)]
    try:
        stack.start()
        token = tokens.issue(site, database_url=stack.ingest_db).token
        _deploy_and_poison(stack, site, cfg.bundle)
        say(
            f"offering {cfg.images} images over ~{cfg.duration_s:.0f} s; faults: "
            + (", ".join(o.fault for o in outcomes) or "none")
        )
        t0 = time.monotonic()
        sim = threading.Thread(
            target=_offer_all, args=(cfg, stack.ingest_url, site, token, t0, offers), daemon=True
        )
        sim.start()
        for outcome, fault in zip(outcomes, sorted(cfg.faults, key=lambda f: f.at_s), strict=True):
            time.sleep(max(0.0, t0 + fault.at_s - time.monotonic()))  # the schedule
            outcome.at_s = round(time.monotonic() - t0, 2)
            say(f"t={outcome.at_s:.1f}s fault {fault}")
            try:
                outcome.recovery_s = round(stack.inject(fault), 2)
            except Exception as exc:  # a fault that could not recover is a finding, not a crash
                outcome.error = f"{type(exc).__name__}: {exc}"
        sim.join()
        say("all images answered; checking")
        verdict = faults_check.check(
            stack.layout.bootstrap,
            site=site,
            offers=offers,
            faults=outcomes,
            poison_key=POISON_KEY,
            settle_s=cfg.settle_s,
        )
    finally:
        stack.stop()
    return {
        "site": site,
        "images": cfg.images,
        "duration_s": cfg.duration_s,
        "schedule": [str(f) for f in cfg.faults],
        "faults": [asdict(o) for o in outcomes],
        **verdict,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a short Markdown table (fault, when, recovery, lost, duplicates)."""
    lines = [
        "| fault | at (s) | recovery (s) | lost | duplicate decisions |",
        "|---|---|---|---|---|",
    ]
    for f in report["faults"]:
        rec = f["recovery_s"] if f["recovery_s"] is not None else f"failed: {f['error']}"
        lines.append(
            f"| {f['fault']} | {f['at_s']} | {rec} | {f.get('lost', 0)} | "
            f"{f.get('duplicates', 0)} |"
        )
    s = report["summary"]
    lines += [
        "",
        f"offered {s['offered']}, acknowledged {s['acknowledged']}, rejected {s['rejected']}, "
        f"unanswered {s['unanswered']}; lost {s['lost']}, duplicate champion decisions after "
        f"dedupe {s['duplicates_after_dedupe']}, raw redeliveries {s['raw_redeliveries']}; "
        f"DLQ {json.dumps(s['dlq'])}; lag after {s['lag_after']}; "
        f"verdict **{'pass' if report['passed'] else 'FAIL'}**"
        + ("" if report["passed"] else f" ({'; '.join(report['failures'])})"),
    ]
    return "\n".join(lines)


def register(bench: typer.Typer) -> None:
    """``defectloop bench faults`` on the ``bench`` command group."""

    @bench.command("faults")
    def faults_command(
        report: Path = typer.Option(..., help="Write the JSON report here (and a .md beside it)."),
        images: int | None = typer.Option(None, min=1, help="Images offered (default 2000)."),
        duration: float | None = typer.Option(
            None, min=5.0, help="Seconds over which they are offered (default 100)."
        ),
        fault: list[str] = typer.Option(
            [], "--fault", help="target:action:seconds, repeatable (default: the full schedule)."
        ),
        quick: bool = typer.Option(
            False, help="CI-sized: 100 images over 25 s under the quick schedule."
        ),
        bundle: Path | None = typer.Option(None, help="Model bundle (default: site A's)."),
        workdir: Path | None = typer.Option(None, help="Keep broker, databases and logs here."),
    ) -> None:
        """kill -9 inference, restart the broker and ingest while gateways post; then check."""
        import tempfile

        from rich.console import Console

        from defectloop.cli.bench import _bundle_or_bootstrap
        from defectloop.cli.pipeline_bench import write_report

        console = Console()
        schedule = tuple(fault) or (QUICK_SCHEDULE if quick else DEFAULT_SCHEDULE)
        cfg = FaultsConfig(
            bundle=_bundle_or_bootstrap(bundle),
            workdir=workdir or Path(tempfile.mkdtemp(prefix="defectloop-faults-")),
            images=images or (100 if quick else 2000),
            duration_s=duration or (25.0 if quick else 100.0),
            faults=tuple(Fault.parse(f) for f in schedule),
        )
        with console.status("starting the stack...") as status:
            result = run_faults(cfg, lambda msg: status.update(msg))
        write_report(result, report)
        table = markdown(result)
        report.with_suffix(".md").write_text(table + "\n")
        console.print(table)
        console.print(f"report: {report} (workdir {cfg.workdir})")
        if not result["passed"]:
            raise typer.Exit(1)
