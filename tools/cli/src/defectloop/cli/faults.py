"""`defectloop bench faults`: the stack under a fault schedule, then an independent checker.

An isolated broker (its own ports and data) and the services as real processes (the
supervisor's, under the run's own work directory) serve one site. Simulated gateways offer N
images and retry each with the **same bytes** until ingest answers (202, or a 4xx that is final),
while a schedule injects faults (:data:`ACTIONS`): ``kill`` (``kill -9``, then started again;
the broker on the same data), ``restart`` (SIGTERM, start), ``stop`` (SIGSTOP for a while, then
SIGCONT), ``inference:scale`` (a second inference process joins the group), ``labelstudio:down``
(stopped for a while, started again). A schedule naming annotation-sync or Label Studio also runs
those two (a Label Studio of the run's own). One poison record is produced on ``image.captured``
at the start (what the DLQ must hold, and only that). Each service's peak RSS is sampled.

Afterwards the checker (:mod:`defectloop.cli.faults_check`) reads the topics with its own client
and judges: every acknowledged image has exactly one champion decision (one ``decision_id``),
none is lost, the DLQs hold only the injected poison, the consumer groups' lag is back to 0, and
every image annotation-sync sampled is exactly one Label Studio task. A schedule naming the
monitor or the trainer also runs that service (``monitor:kill:T``, ``trainer:kill:T``); the checker
then compares the monitor's stored champion predictions with the topic's unique decisions, and
checks that the trainer never opened two jobs for one incident.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer

from defectloop.cli import kafka_local, labelstudio_local, supervisor
from defectloop.cli.processes import alive, free_port
from defectloop.common.errors import ComponentError, InvalidInputError

# What each target accepts. ``kill`` = ``kill -9`` then start (the broker: on the same data);
# ``restart`` = SIGTERM then start; ``stop`` = SIGSTOP for D seconds then SIGCONT (a frozen
# process: its sockets stay open, its heartbeats stop); ``scale`` = one more inference process
# joins the consumer group; ``down`` = Label Studio stopped for D seconds, then started again.
ACTIONS: dict[str, tuple[str, ...]] = {
    "inference": ("kill", "restart", "stop", "scale"),
    "ingest": ("kill", "restart", "stop"),
    "annotation-sync": ("kill", "restart", "stop"),
    "monitor": ("kill", "restart", "stop"),
    "trainer": ("kill", "restart", "stop"),
    "kafka": ("kill", "restart", "stop"),
    "labelstudio": ("down",),
}
TARGETS = tuple(ACTIONS)
TIMED = ("stop", "down")
"""Actions that last: ``target:action:at:for`` (the others are ``target:action:at``)."""
ANNOTATION_TARGETS = ("annotation-sync", "labelstudio")
"""A schedule naming one of these also runs annotation-sync and a Label Studio."""
OPTIONAL_SERVICES = ("monitor", "trainer")
"""A schedule naming one of these also runs it (they do not run otherwise)."""
POISON_KEY = "faultbench/poison"
CAMERAS = 4

Progress = Callable[[str], None]


def _seconds(text: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidInputError(
            f"fault {text!r}: {value!r} is not a number of seconds", hint="e.g. inference:kill:20"
        ) from None
    if seconds < 0:
        raise InvalidInputError(f"fault {text!r}: negative time", hint="seconds after start")
    return seconds


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: ``target:action:at_s`` (seconds after the gateways start), or
    ``target:action:at_s:for_s`` for a fault that lasts (``stop``, ``down``)."""

    target: str
    action: str
    at_s: float
    for_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> Fault:
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise InvalidInputError(
                f"fault {text!r} is not target:action:seconds[:duration]",
                hint="e.g. --fault inference:kill:20 --fault inference:stop:20:15",
            )
        target, action = parts[0], parts[1]
        if action not in ACTIONS.get(target, ()):
            raise InvalidInputError(
                f"fault {text!r}: unknown target or action",
                hint="; ".join(f"{t}: {'/'.join(a)}" for t, a in ACTIONS.items()),
            )
        times = [_seconds(text, value) for value in parts[2:]]
        if (action in TIMED) != (len(times) == 2):
            raise InvalidInputError(
                f"fault {text!r}: {action} "
                + ("lasts: give its duration" if action in TIMED else "takes no duration"),
                hint="stop and down are target:action:at:for (e.g. inference:stop:20:15); "
                "the others target:action:at",
            )
        return cls(target, action, times[0], times[1] if len(times) == 2 else None)

    def __str__(self) -> str:
        tail = f":{self.for_s:g}" if self.for_s is not None else ""
        return f"{self.target}:{self.action}:{self.at_s:g}{tail}"


DEFAULT_SCHEDULE = (
    "inference:kill:15",
    "kafka:restart:35",
    "inference:stop:60:20",
    "annotation-sync:kill:90",
    "inference:scale:110",
    "labelstudio:down:130:30",
    "kafka:stop:170:15",
    "inference:kill:195",
    "inference:restart:215",
    "ingest:restart:230",
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
    ack_gap_s: float | None = None
    """The longest time without a 202 from the fault until the next one (its outage as the
    gateways saw it)."""


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
    duration_s: float = 240.0
    faults: tuple[Fault, ...] = field(default_factory=tuple)
    gateways: int = 4
    give_up_s: float = 120.0
    stall_s: float = 60.0
    """The checker's watchdog: a lag with no committed progress for this long is a fail."""


def _frame(index: int) -> bytes:
    from defectloop.factory_sim import encode_png, get_site, render

    return bytes(encode_png(render(get_site("A"), index, seed=11).pixels))


class Stack:
    """An isolated broker, the ingest + inference processes of one run and, when the schedule
    needs them, annotation-sync and a Label Studio of its own."""

    def __init__(
        self,
        workdir: Path,
        say: Progress,
        *,
        site: str,
        annotation: bool,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.home = workdir / "state"
        self.say = say
        self.layout = kafka_local.KafkaLayout(
            workdir / "kafka", port=free_port(), controller_port=free_port()
        )
        names = ("ingest", "inference", *(("annotation-sync",) if annotation else ()), *extra)
        self.specs = {
            s.name: s
            for s in supervisor.stack_services({name: free_port() for name in names})
            if s.name in names
        }
        self.ingest_db = f"sqlite:///{workdir / 'ingest.db'}"
        self.annotation_db = workdir / "annotation-sync.db"
        self.monitor_db = workdir / "monitor.db"
        self.trainer_db = workdir / "trainer.db"
        self.env = {
            "DEFECTLOOP_KAFKA_BOOTSTRAP": self.layout.bootstrap,
            "DEFECTLOOP_BLOB_URL": (workdir / "blobs").as_uri(),
            "DEFECTLOOP_INGEST_DATABASE_URL": self.ingest_db,
            "DEFECTLOOP_INFERENCE_DATABASE_URL": f"sqlite:///{workdir / 'inference.db'}",
            "DEFECTLOOP_INFERENCE_PROVIDERS": "cpu",
            "DEFECTLOOP_INGEST_RATE_LIMIT_PER_TOKEN": "100000/second",
            "DEFECTLOOP_INGEST_RATE_LIMIT_PER_SITE": "100000/second",
            "DEFECTLOOP_MONITOR_DATABASE_URL": f"sqlite:///{self.monitor_db}",
            "DEFECTLOOP_TRAINER_DATABASE_URL": f"sqlite:///{self.trainer_db}",
            "DEFECTLOOP_TRAINER_WORK_DIR": str(workdir / "trainer-jobs"),
        }
        if "monitor" in self.specs:
            self.env["DEFECTLOOP_TRAINER_MONITOR_URL"] = (
                f"http://127.0.0.1:{self.specs['monitor'].port}"
            )
        self.service_env: dict[str, dict[str, str]] = {}
        self.studio: labelstudio_local.LabelStudioLayout | None = None
        if annotation:
            self.studio = labelstudio_local.LabelStudioLayout(
                workdir / "labelstudio", port=free_port()
            )
            # Every sampled image should reach Label Studio: no daily budget in the way, a
            # share large enough to push a few batches, and a short retry after an outage.
            self.service_env["annotation-sync"] = {
                "DEFECTLOOP_ANNOTATION_SYNC_DATABASE_URL": f"sqlite:///{self.annotation_db}",
                "DEFECTLOOP_ANNOTATION_SYNC_SITES": json.dumps([site]),
                "DEFECTLOOP_ANNOTATION_SYNC_RANDOM_SHARE": "0.2",
                "DEFECTLOOP_ANNOTATION_SYNC_DAILY_BUDGET": "1000000",
                "DEFECTLOOP_ANNOTATION_SYNC_PUSH_RETRY_S": "2",
            }
        self.peak_rss_kib: dict[str, int] = {}
        self._sampling = threading.Event()

    @property
    def ingest_url(self) -> str:
        return f"http://127.0.0.1:{self.specs['ingest'].port}"

    def start(self) -> None:
        with ThreadPoolExecutor(1) as pool:
            # Label Studio (tens of seconds, even from a migrated copy) starts beside the broker.
            studio = pool.submit(self._start_studio) if self.studio else None
            self.say(f"starting an isolated Kafka broker on {self.layout.bootstrap}")
            kafka_local.start(self.layout, partitions=3)
            if studio is not None:
                studio.result()
        for name in self.specs:  # all start at once, then all are waited for
            self._launch(name)
        for spec in self.specs.values():
            supervisor.wait_healthy(spec, timeout_s=120, home=self.home)
        threading.Thread(target=self._sample_rss, daemon=True).start()

    def _start_studio(self) -> None:
        assert self.studio is not None
        if not labelstudio_local.installed():
            raise ComponentError(
                "Label Studio is not installed: annotation-sync faults need it",
                hint="run scripts/install-labelstudio.sh (make setup does it)",
            )
        if not self.studio.data_dir.exists():  # a migrated copy: no minutes of migrations
            from defectloop.cli.demo_driver import _label_studio_template

            shutil.copytree(
                _label_studio_template(), self.studio.home, ignore=shutil.ignore_patterns("ready")
            )
        labelstudio_local.start(self.studio, timeout_s=600)
        self.service_env["annotation-sync"] |= {
            "DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_URL": self.studio.url,
            "DEFECTLOOP_ANNOTATION_SYNC_LABEL_STUDIO_TOKEN": labelstudio_local.credentials(
                self.studio
            )["token"],
        }

    def _launch(self, name: str) -> None:
        env = {**self.env, **self.service_env.get(name, {})}
        supervisor.start_service(self.specs[name], env=env, home=self.home, traces=False)

    def start_service(self, name: str) -> None:
        self._launch(name)
        supervisor.wait_healthy(self.specs[name], timeout_s=120, home=self.home)

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

    def freeze(self, name: str, for_s: float) -> None:
        """SIGSTOP ``name`` for ``for_s`` seconds, then SIGCONT: a process that hangs."""
        pid = self.pid(name)
        if pid is None:
            raise ComponentError(f"{name} is not running: nothing to freeze", hint="see its log")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(for_s)  # the fault's own duration
        finally:
            os.kill(pid, signal.SIGCONT)

    def scale_out(self) -> None:
        """One more inference process in the same consumer group (its own port and database)."""
        n = sum(1 for name in self.specs if name.startswith("inference"))
        base = self.specs["inference"]
        spec = supervisor.ServiceSpec(f"inference-{n + 1}", base.module, free_port())
        self.specs[spec.name] = spec
        self.service_env[spec.name] = {
            "DEFECTLOOP_INFERENCE_PORT": str(spec.port),
            "DEFECTLOOP_INFERENCE_DATABASE_URL": f"sqlite:///{self.workdir / spec.name}.db",
        }
        self.start_service(spec.name)

    def label_studio_down(self, for_s: float) -> None:
        assert self.studio is not None
        labelstudio_local.stop(self.studio)
        time.sleep(for_s)  # the outage's own duration
        labelstudio_local.start(self.studio, timeout_s=600)

    def inject(self, fault: Fault) -> float:
        """Apply ``fault``; return the seconds from its end (the kill, the SIGCONT, Label
        Studio's restart) until everything answers healthy again."""
        started = time.monotonic()
        if fault.action == "stop":
            self.freeze(fault.target, fault.for_s or 0.0)
            started = time.monotonic()
        elif fault.action == "down":
            self.label_studio_down(fault.for_s or 0.0)
        elif fault.action == "scale":
            self.scale_out()
        elif fault.target == "kafka":
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

    def _sample_rss(self) -> None:
        """Each service's peak RSS (the kernel's high-water mark of each of its processes)."""
        while not self._sampling.wait(0.5):  # a sampling period, not synchronisation
            for name in list(self.specs):
                kib = _peak_rss_kib(self.pid(name))
                if kib is not None and kib > self.peak_rss_kib.get(name, 0):
                    self.peak_rss_kib[name] = kib

    def stop(self) -> None:
        self._sampling.set()
        for spec in self.specs.values():
            supervisor.stop_service(spec, home=self.home)
        if self.studio is not None:
            labelstudio_local.stop(self.studio)
        kafka_local.stop(self.layout)


def _peak_rss_kib(pid: int | None) -> int | None:
    """``VmHWM`` of ``pid`` (Linux), None when unknown."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


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
    site = "faults" + uuid.uuid4().hex[:6]
    annotation = any(f.target in ANNOTATION_TARGETS for f in cfg.faults)
    extra = tuple(name for name in OPTIONAL_SERVICES if any(f.target == name for f in cfg.faults))
    stack = Stack(cfg.workdir, say, site=site, annotation=annotation, extra=extra)
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
            stall_s=cfg.stall_s,
            annotation=faults_check.AnnotationSide(
                stack.annotation_db,
                stack.studio.url,
                labelstudio_local.credentials(stack.studio)["token"],
            )
            if stack.studio is not None
            else None,
            monitor_db=stack.monitor_db if "monitor" in stack.specs else None,
            trainer_db=stack.trainer_db if "trainer" in stack.specs else None,
        )
        peak_rss = {name: round(kib / 1024, 1) for name, kib in stack.peak_rss_kib.items()}
    finally:
        stack.stop()
    return {
        "site": site,
        "images": cfg.images,
        "duration_s": cfg.duration_s,
        "schedule": [str(f) for f in cfg.faults],
        "faults": [asdict(o) for o in outcomes],
        "peak_rss_mib": peak_rss,
        **verdict,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a short Markdown table (fault, when, recovery, lost, duplicates)."""
    lines = [
        "| fault | at (s) | recovery (s) | longest time without a 202 (s) | lost "
        "| duplicate decisions |",
        "|---|---|---|---|---|---|",
    ]
    for f in report["faults"]:
        rec = f["recovery_s"] if f["recovery_s"] is not None else f"failed: {f['error']}"
        lines.append(
            f"| {f['fault']} | {f['at_s']} | {rec} | {f.get('ack_gap_s') or '-'} | {f.get('lost', 0)} | "
            f"{f.get('duplicates', 0)} |"
        )
    s = report["summary"]
    lines += [
        "",
        f"offered {s['offered']}, acknowledged {s['acknowledged']}, rejected {s['rejected']}, "
        f"unanswered {s['unanswered']}; lost {s['lost']}, duplicate champion decisions after "
        f"dedupe {s['duplicates_after_dedupe']}, raw redeliveries {s['raw_redeliveries']}; "
        f"DLQ {json.dumps(s['dlq'])}; lag after {s['lag_after']} "
        f"(zero {s.get('zero_lag_after_s')} s after the last answer); "
        + (_annotation_line(s["annotation"]) if s.get("annotation") else "")
        + (_monitor_line(s["monitor"]) if s.get("monitor") else "")
        + (_trainer_line(s["trainer"]) if s.get("trainer") else "")
        + f"peak RSS (MiB) {json.dumps(report.get('peak_rss_mib', {}))}; "
        f"verdict **{'pass' if report['passed'] else 'FAIL'}**"
        + ("" if report["passed"] else f" ({'; '.join(report['failures'])})"),
    ]
    return "\n".join(lines)


def _annotation_line(a: dict[str, Any]) -> str:
    return (
        f"annotation-sync: {a['samples']} sampled, {a['unpushed']} unpushed, "
        f"{a['tasks']} Label Studio tasks, missing {a['missing']}, pushed twice "
        f"{a['duplicated']}, unknown {a['unknown']}, lag after {a['lag_after']} "
        f"(all pushed {a.get('all_pushed_after_s')} s after inference caught up); "
    )


def _monitor_line(m: dict[str, Any]) -> str:
    return (
        f"monitor: {m['champion_predictions']} champion predictions stored for "
        f"{m['unique_decisions']} decisions on the topic, lag after {m['lag_after']}; "
    )


def _trainer_line(t: dict[str, Any]) -> str:
    return f"trainer: {t['jobs']} jobs for {t['incidents']} incidents, lag after {t['lag_after']}; "


def register(bench: typer.Typer) -> None:
    """``defectloop bench faults`` on the ``bench`` command group."""

    @bench.command("faults")
    def faults_command(
        report: Path = typer.Option(..., help="Write the JSON report here (and a .md beside it)."),
        images: int | None = typer.Option(None, min=1, help="Images offered (default 2000)."),
        duration: float | None = typer.Option(
            None, min=5.0, help="Seconds over which they are offered (default 240)."
        ),
        fault: list[str] = typer.Option(
            [],
            "--fault",
            help="target:action:seconds[:duration], repeatable (default: the full schedule).",
        ),
        quick: bool = typer.Option(
            False, help="CI-sized: 100 images over 25 s under the quick schedule."
        ),
        bundle: Path | None = typer.Option(None, help="Model bundle (default: site A's)."),
        workdir: Path | None = typer.Option(None, help="Keep broker, databases and logs here."),
    ) -> None:
        """Kill, freeze, restart and scale the stack's parts while gateways post; then check."""
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
            duration_s=duration or (25.0 if quick else 240.0),
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
