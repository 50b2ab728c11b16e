"""The closed-loop demo's scenario and driver: sites drift, the stack notices and repairs itself.

`defectloop demo` (and the e2e test, with smaller knobs) runs :func:`run_scenario` against a
running stack: simulated cameras post frames to ingest, simulated annotators label in Label Studio,
and after a baseline period the scenario's drifts switch on. Everything after that is the stack's
own doing (monitor → trainer → gates → shadow → promotion); the driver only *watches* it, through
the monitor's and the trainer's HTTP APIs, and measures each site's recall with the simulator's
truth on held-out images (:mod:`defectloop.cli.demo_report`), independent of the sampled labels.

numpy, OpenCV and onnxruntime are imported inside the functions that need them, so that
``defectloop --help`` stays instant.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from defectloop.common.errors import InvalidInputError
from defectloop.common.logging import get_logger

log = get_logger(__name__)

DEMO_SITES: tuple[str, ...] = ("A", "B", "C")
# Site B's lamp fails (and its defects look different); one camera of site C goes out of focus.
DEFAULT_DRIFTS: tuple[str, ...] = ("B:lighting::1.0", "B:new-defect::0.5", "C/cam-2:blur::0.8")
DRIFT_HINT = (
    "write --drift SITE[/CAMERA]:KIND[:START[:SEVERITY]], START in seconds after the baseline "
    "(empty: at once), e.g. --drift B:lighting::1.0 or --drift C/cam-2:blur:30:0.8"
)
JOB_FINAL = frozenset({"deployed", "gate_failed", "rejected", "timed_out", "failed", "ignored"})


@dataclass(frozen=True)
class DemoDrift:
    """A drift of one site (or one of its cameras) from ``start_s`` after the baseline period."""

    site: str
    kind: str
    start_s: float
    severity: float
    camera: str | None = None

    @property
    def spec(self) -> str:
        where = f"{self.site}/{self.camera}" if self.camera else self.site
        return f"{where}:{self.kind}:{self.start_s:g}:{self.severity:g}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "start_s": self.start_s,
            "severity": self.severity,
            "camera": self.camera,
        }


def parse_demo_drift(spec: str, sites: Sequence[str]) -> DemoDrift:
    """Parse ``SITE[/CAMERA]:KIND[:START[:SEVERITY]]`` (``InvalidInputError`` with a hint)."""
    from defectloop.factory_sim import parse_drift

    where, sep, rest = spec.strip().partition(":")
    site, _, camera = where.partition("/")
    if not sep or not site or not rest:
        raise InvalidInputError(f"cannot parse drift {spec!r}", hint=DRIFT_HINT)
    if site not in sites:
        raise InvalidInputError(
            f"drift {spec!r} names site {site!r}, which the demo does not simulate",
            hint=f"the demo's sites are {', '.join(sites)}",
        )
    parts = rest.split(":")
    if len(parts) > 3:
        raise InvalidInputError(f"cannot parse drift {spec!r}", hint=DRIFT_HINT)
    try:
        start_s = float(parts[1]) if len(parts) > 1 and parts[1] else 0.0
    except ValueError:
        raise InvalidInputError(f"cannot parse drift {spec!r}", hint=DRIFT_HINT) from None
    if start_s < 0:
        raise InvalidInputError(f"drift {spec!r}: START must be >= 0 seconds", hint=DRIFT_HINT)
    # The simulator validates kind and severity (its own error names the kinds).
    sim = parse_drift(":".join([parts[0], "0", *(parts[2:3] if len(parts) > 2 else [])]))
    return DemoDrift(site, sim.kind, start_s, sim.severity, camera or None)


@dataclass(frozen=True)
class DemoConfig:
    """The scenario's knobs. :meth:`quick` and :meth:`full` are the demo's; tests shrink them."""

    name: str
    sites: tuple[str, ...] = DEMO_SITES
    cameras: int = 2
    camera_rate: float = 1.0  # frames per second per camera
    annotators: int = 2
    annotation_rate: float = 2.0  # annotations per second per site
    random_share: float = 0.7  # annotation-sync's random stratum (what the monitor measures)
    # The monitor's baseline is the model's own hold-out recall (model.deployed), so the baseline
    # period only has to fill the drift and quality references (in frames, so a slow machine
    # that renders fewer frames per second still fills them before the drift frame).
    baseline_s: float = 30.0
    deadline_s: float = 1200.0  # after the drift: give up waiting for recovery
    heldout_images: int = 200  # truth recall: simulated held-out images per condition
    min_fresh_labels: int = 80
    min_fresh_defective: int = 24
    # The gate's McNemar needs >= 5 discordant defective eval images: freeze more of few labels.
    min_eval_defective: int = 8
    eval_fraction: float = 0.3
    # Label Studio is the bottleneck on a small machine: sites with no site-wide drift get a
    # small daily budget (enough for their frozen gate sets), the drifted site the rest.
    quiet_site_budget: int = 40
    train_preset: str = "quick"
    # None: the preset's epochs. 16 instead of the quick preset's 32 cost B's fine-tune a third
    # of its recall (0.67 vs 0.81 on 150 held-out drifted images, same snapshot; docs/demo.md).
    finetune_epochs: int | None = None
    # Replay: 0.7 of the training set, 0.7 of it from the champion's own training data (the
    # policy's default 0.5 forgot B's normal parts: recall 0.81 instead of 0.94; docs/trainer.md).
    replay_share: float = 0.7
    seed: int = 1
    drifts: tuple[DemoDrift, ...] = ()

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(name="quick")

    @classmethod
    def full(cls) -> DemoConfig:
        return cls(
            name="full",
            baseline_s=120.0,
            deadline_s=1500.0,
            heldout_images=400,
            min_fresh_labels=100,
            min_fresh_defective=30,
            quiet_site_budget=100,
            train_preset="default",
        )

    def with_drifts(self, specs: Sequence[str] | None) -> DemoConfig:
        drifts = tuple(parse_demo_drift(s, self.sites) for s in (specs or DEFAULT_DRIFTS))
        for d in drifts:
            if d.camera is not None and d.camera not in self.camera_names():
                raise InvalidInputError(
                    f"drift {d.spec!r} names camera {d.camera!r}",
                    hint=f"each site's cameras are {', '.join(self.camera_names())}",
                )
        return replace(self, drifts=drifts)

    def camera_names(self) -> list[str]:
        return [f"cam-{i + 1}" for i in range(self.cameras)]

    def start_index(self, drift: DemoDrift) -> int:
        """The first frame index a drift applies to (cameras post ``camera_rate`` frames/s)."""
        return round((self.baseline_s + drift.start_s) * self.camera_rate)

    def service_env(self, monitor_url: str) -> dict[str, dict[str, str]]:
        """Settings that make a demo's hours fit into minutes: short windows, quick labels."""
        frames = max(20, int(self.baseline_s * self.camera_rate))  # one camera's baseline frames
        images = frames * self.cameras
        # References fit in the baseline; the detectors' own minimum sizes follow them down.
        drift_ref, drift_win = max(10, int(images * 0.6)), max(10, int(images * 0.4))
        quality_ref, quality_win = max(10, int(frames * 0.6)), max(10, int(frames * 0.4))
        policy = {
            "min_fresh_labels": self.min_fresh_labels,
            "min_fresh_defective": self.min_fresh_defective,
            "min_eval_defective": self.min_eval_defective,
            "eval_fraction": self.eval_fraction,
            "replay_share": self.replay_share,
            "label_wait_timeout_s": self.deadline_s,
            "shadow_period_s": self.deadline_s,
        }
        quiet = [
            s for s in self.sites if not any(d.site == s and d.camera is None for d in self.drifts)
        ]
        return {
            "monitor": {
                "DEFECTLOOP_MONITOR_EVALUATION_INTERVAL_S": "3",
                "DEFECTLOOP_MONITOR_PERFORMANCE_EVERY_LABELS": "5",
                "DEFECTLOOP_MONITOR_DRIFT_REFERENCE_IMAGES": str(drift_ref),
                "DEFECTLOOP_MONITOR_DRIFT_WINDOW_IMAGES": str(drift_win),
                "DEFECTLOOP_MONITOR_DRIFT__MIN_REFERENCE": str(drift_ref),
                "DEFECTLOOP_MONITOR_DRIFT__MIN_WINDOW": str(drift_win),
                # Consecutive evaluations on fresh (not overlapping) windows: the incidents'
                # 2-of-3 entry rule then needs independent evidence. With windows of a dozen
                # frames re-tested every few frames, a camera of an undrifted site crossed the
                # quality test by chance within minutes (demo run, 7 Dec 2026).
                "DEFECTLOOP_MONITOR_DRIFT_EVERY_IMAGES": str(drift_win),
                "DEFECTLOOP_MONITOR_QUALITY_REFERENCE_FRAMES": str(quality_ref),
                "DEFECTLOOP_MONITOR_QUALITY_WINDOW_FRAMES": str(quality_win),
                "DEFECTLOOP_MONITOR_QUALITY__MIN_REFERENCE": str(quality_ref),
                "DEFECTLOOP_MONITOR_QUALITY__MIN_WINDOW": str(quality_win),
                "DEFECTLOOP_MONITOR_QUALITY_EVERY_FRAMES": str(quality_win * self.cameras),
            },
            "annotation-sync": {
                "DEFECTLOOP_ANNOTATION_SYNC_RANDOM_SHARE": str(self.random_share),
                "DEFECTLOOP_ANNOTATION_SYNC_DAILY_BUDGET": "100000",
                "DEFECTLOOP_ANNOTATION_SYNC_DAILY_BUDGETS": json.dumps(
                    {s: self.quiet_site_budget for s in quiet}
                ),
                "DEFECTLOOP_ANNOTATION_SYNC_OVERLAP_SHARE": "0.05",
                "DEFECTLOOP_ANNOTATION_SYNC_POLL_INTERVAL_S": "5",
            },
            "trainer": {
                "DEFECTLOOP_TRAINER_DEFAULT_PROMOTION_POLICY": "auto",
                "DEFECTLOOP_TRAINER_RETRAIN_POLICY": json.dumps(policy),
                "DEFECTLOOP_TRAINER_TRAIN_PRESET": self.train_preset,
                "DEFECTLOOP_TRAINER_TRAIN_OVERRIDES": json.dumps(
                    {}
                    if self.finetune_epochs is None
                    else {"train": {"epochs": self.finetune_epochs}}
                ),
                "DEFECTLOOP_TRAINER_MONITOR_URL": monitor_url,
                "DEFECTLOOP_TRAINER_SCORECARD_POLL_S": "3",
                "DEFECTLOOP_TRAINER_JOB_TICK_S": "1",
            },
        }


def _iso_ts(value: str | None) -> float | None:
    if not value:
        return None
    stamp = datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


@dataclass
class SiteTrack:
    """What the driver has seen of one site (all times are Unix seconds)."""

    site: str
    drifts: tuple[DemoDrift, ...]
    drift_at: float | None = None
    champion_at_start: str | None = None
    champion: str | None = None
    monitor_state: str = "ok"
    headline_recall: float | None = None
    n_labels: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    incidents: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    job_states: set[tuple[str, str]] = field(default_factory=set)
    scorecard: dict[str, Any] | None = None
    detected_at: float | None = None
    recovered_at: float | None = None
    truth: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def retrains(self) -> bool:
        """The scenario expects a retraining here: a site-wide drift (not one camera's)."""
        return any(d.camera is None for d in self.drifts)

    @property
    def retrained(self) -> bool:
        return any(j.get("state") == "deployed" for j in self.jobs.values())

    def event(self, kind: str, at: float, **facts: Any) -> None:
        self.events.append(
            {"kind": kind, "at": datetime.fromtimestamp(at, UTC).isoformat(), **facts}
        )
        self.events.sort(key=lambda e: e["at"])

    def finished(self) -> bool:
        """Nothing more to wait for at this site."""
        if not self.drifts:
            return True
        if self.drift_at is None:
            return False
        if self.retrains:
            return any(j.get("state") in JOB_FINAL - {"ignored"} for j in self.jobs.values())
        # A camera's drift: its data-quality alert, and the trainer's word that it does not train.
        dq = any(i["kind"] == "data_quality" for i in self.incidents.values())
        return dq and any(j.get("state") == "ignored" for j in self.jobs.values())

    def observe_incidents(self, incidents: Sequence[dict[str, Any]]) -> None:
        for inc in incidents:
            iid = inc["incident_id"]
            opened = _iso_ts(inc.get("opened_at")) or time.time()
            if iid not in self.incidents:
                degraded = inc.get("degraded") or {}
                self.event(
                    "metric.degraded",
                    opened,
                    degradation=inc["kind"],
                    metric=inc.get("metric"),
                    camera_id=inc.get("camera_id"),
                    model_version=inc.get("model_version"),
                    value=degraded.get("value"),
                    baseline=degraded.get("baseline"),
                    incident_id=iid,
                )
                if self.drift_at is not None and opened >= self.drift_at - 1.0:
                    self.detected_at = min(self.detected_at or opened, opened)
            closed = _iso_ts(inc.get("closed_at"))
            if closed is not None and not (self.incidents.get(iid) or {}).get("closed_at"):
                self.event(
                    "metric.recovered",
                    closed,
                    degradation=inc["kind"],
                    reason=inc.get("close_reason"),
                    incident_id=iid,
                )
            self.incidents[iid] = inc

    def observe_jobs(self, jobs: Sequence[dict[str, Any]]) -> None:
        for job in jobs:
            jid, state = job["job_id"], job["state"]
            self.jobs[jid] = job
            if (jid, state) in self.job_states:
                continue
            self.job_states.add((jid, state))
            at = _iso_ts(job.get("updated_at")) or time.time()
            if state == "ignored":
                self.event("trainer.no_retraining", at, job_id=jid, reason=job.get("reason"))
                continue
            self.event(
                f"job.{state}",
                at,
                job_id=jid,
                reason=job.get("reason"),
                candidate_version=job.get("candidate_version"),
            )
            if state == "deployed":
                self.recovered_at = at


def site_status(track: SiteTrack, policy_labels: tuple[int, int]) -> tuple[str, str]:
    """(state, progress) of a site for the live view, from what the APIs said."""
    live = [j for j in track.jobs.values() if j.get("state") not in JOB_FINAL]
    job = live[-1] if live else None
    if job is not None:
        state = job["state"]
        if state == "waiting_for_labels":
            need, need_def = policy_labels
            return "waiting for labels", (
                f"{job['fresh_labels']}/{need} fresh, {job['fresh_defective']}/{need_def} defective"
            )
        if state == "training":
            prog = (job.get("detail") or {}).get("progress") or {}
            epoch = f"epoch {prog['epoch']}/{prog['epochs']}" if prog else "starting"
            return "training", f"{job.get('candidate_version')} {epoch}"
        if state == "shadow":
            card = track.scorecard or {}
            n = card.get("n_positive") or 0  # paired defective images (the verdict needs 30)
            return (
                "shadow",
                f"{job.get('candidate_version')} scorecard {card.get('verdict', '…')} (n={n})",
            )
        return state.replace("_", " "), job.get("reason") or ""
    if track.retrained:
        return "recovered", f"champion {track.champion}"
    failed = [
        j for j in track.jobs.values() if j.get("state") in JOB_FINAL - {"ignored", "deployed"}
    ]
    if failed:
        return failed[-1]["state"].replace("_", " "), failed[-1].get("reason") or ""
    open_inc = [i for i in track.incidents.values() if i.get("open")]
    dq = [i for i in open_inc if i["kind"] == "data_quality"]
    if dq:
        cams = ", ".join(sorted({str(i.get("camera_id")) for i in dq}))
        return "data-quality alert", f"camera {cams}; no retraining (trainer: ignored)"
    if open_inc:
        return "degraded", ", ".join(sorted({f"{i['kind']}:{i['metric']}" for i in open_inc}))
    if track.monitor_state != "ok":
        return track.monitor_state, "watching"
    return "OK", f"{track.n_labels} labels"


class StackApis:
    """The monitor's and the trainer's HTTP APIs (no reaching into their databases)."""

    def __init__(self, monitor_url: str, trainer_url: str) -> None:
        self.monitor_url = monitor_url.rstrip("/")
        self.trainer_url = trainer_url.rstrip("/")
        # No keep-alive: polls can be further apart than uvicorn's keep-alive (5 s) on a busy
        # machine, and a reused connection the server already closed fails the request.
        self.client = httpx.AsyncClient(
            timeout=15.0, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _get(self, url: str, **params: str) -> Any:
        try:
            resp = await self.client.get(url, params=params or None)
        except httpx.HTTPError as exc:
            log.warning("demo_api_unreachable", url=url, error=str(exc))
            return None
        if resp.status_code != 200:
            return None  # 404: the monitor has no data for the site yet
        return resp.json()

    async def observe(self, track: SiteTrack) -> None:
        site = track.site
        summary = await self._get(f"{self.monitor_url}/v1/sites/{site}")
        if summary:
            track.monitor_state = summary.get("state", "ok")
            champion = (summary.get("models") or {}).get("champion") or {}
            track.champion = champion.get("model_version") or track.champion
            headline = summary.get("headline") or {}
            recall = headline.get("recall") or {}
            track.headline_recall = recall.get("value") if isinstance(recall, dict) else None
            track.n_labels = int(headline.get("n_images") or 0)
        incidents = await self._get(f"{self.monitor_url}/v1/sites/{site}/incidents")
        if isinstance(incidents, list):
            track.observe_incidents(incidents)
        elif isinstance(incidents, dict):
            track.observe_incidents(incidents.get("incidents", []))
        jobs = await self._get(f"{self.trainer_url}/v1/jobs", site=site)
        if isinstance(jobs, list):
            track.observe_jobs(jobs)
        if any(j.get("state") == "shadow" for j in track.jobs.values()):
            cards = await self._get(f"{self.monitor_url}/v1/sites/{site}/scorecards")
            rows = cards.get("scorecards", cards) if isinstance(cards, dict) else cards
            if isinstance(rows, list) and rows:
                track.scorecard = rows[-1]


@dataclass(frozen=True)
class Endpoints:
    ingest_url: str
    monitor_url: str
    trainer_url: str
    label_studio_url: str
    label_studio_token: str
    truth_path: Path
    work_dir: Path


Viewer = Callable[[list[SiteTrack], float, str], None]


async def run_scenario(
    config: DemoConfig,
    endpoints: Endpoints,
    *,
    view: Viewer | None = None,
    poll_s: float = 2.0,
) -> tuple[list[SiteTrack], float]:
    """Cameras and annotators until every drifted site has its outcome (or the deadline).

    Returns the tracks and the scenario's start (Unix seconds). Truth recall is measured on the
    side (a worker thread), with the champion of each moment: before the drift (normal
    conditions), right after it (the drifted conditions), and at the end.
    """
    from defectloop.cli import demo_report
    from defectloop.factory_sim import Drift
    from defectloop.factory_sim.annotators import AnnotatorTeam, LabelStudioAPI, default_team
    from defectloop.factory_sim.cameras import CameraSpec, CameraStats, TruthLog, gateway_token
    from defectloop.factory_sim.cameras import run_camera as camera_loop

    began = time.time()
    tracks = {s: SiteTrack(s, tuple(d for d in config.drifts if d.site == s)) for s in config.sites}
    truth = TruthLog(endpoints.truth_path)
    heldout = demo_report.HeldOut(endpoints.work_dir / "heldout", config)
    # The held-out sets render while the baseline runs (a worker thread).
    prepare = asyncio.create_task(asyncio.to_thread(heldout.prepare, list(tracks.values())))

    specs: list[tuple[CameraSpec, list[DemoDrift]]] = []
    for site in config.sites:
        for cam in config.camera_names():
            mine = [d for d in tracks[site].drifts if d.camera in (None, cam)]
            sim = tuple(Drift(d.kind, config.start_index(d), d.severity) for d in mine)
            token = gateway_token(site, cam)
            specs.append((CameraSpec(site, cam, token, config.seed, sim), mine))
    stats = {(s.site, s.camera): CameraStats() for s, _ in specs}

    def on_frame_for(spec: CameraSpec, mine: list[DemoDrift]) -> Callable[..., None]:
        first = min((config.start_index(d) for d in mine), default=None)

        def on_frame(_spec: CameraSpec, _body: dict[str, Any]) -> None:
            track = tracks[spec.site]
            index = stats[(spec.site, spec.camera)].posted - 1
            if first is not None and index >= first and track.drift_at is None:
                track.drift_at = time.time()
                for d in track.drifts:
                    facts = {
                        ("drift_kind" if k == "kind" else k): v for k, v in d.to_dict().items()
                    }
                    track.event("drift_injected", track.drift_at, **facts)

        return on_frame

    api = LabelStudioAPI(endpoints.label_studio_url, endpoints.label_studio_token)
    teams = [AnnotatorTeam(s, api, truth, default_team(s, config.annotators)) for s in config.sites]
    stop = asyncio.Event()
    measured: dict[str, asyncio.Task[None]] = {}
    apis = StackApis(endpoints.monitor_url, endpoints.trainer_url)
    phase = "baseline"
    async with httpx.AsyncClient(timeout=30.0) as client:
        cams = [
            asyncio.create_task(
                camera_loop(
                    client,
                    spec,
                    truth,
                    rate=config.camera_rate,
                    duration_s=10 * 24 * 3600.0,  # until the scenario stops them
                    ingest_url=endpoints.ingest_url,
                    stats=stats[(spec.site, spec.camera)],
                    on_frame=on_frame_for(spec, mine),
                )
            )
            for spec, mine in specs
        ]
        workers = [
            asyncio.create_task(t.run(rate=config.annotation_rate, stop=stop)) for t in teams
        ]
        try:
            for track in tracks.values():
                track.champion_at_start = await asyncio.to_thread(demo_report.champion, track.site)
            deadline = began + config.baseline_s + config.deadline_s
            while True:
                for task in [*cams, *workers]:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                for track in tracks.values():
                    await apis.observe(track)
                    if track.drift_at is not None and track.site not in measured:
                        # Right after the drift: the champion of this moment, before and after.
                        measured[track.site] = asyncio.create_task(
                            _measure_after_drift(prepare, heldout, track)
                        )
                drifting = [t for t in tracks.values() if t.drift_at is not None]
                phase = "baseline" if not drifting else "drift"
                if view is not None:
                    view(list(tracks.values()), began, phase)
                if all(t.finished() for t in tracks.values()) and drifting:
                    break
                if time.time() > deadline:
                    log.warning("demo_deadline_reached", deadline_s=config.deadline_s)
                    break
                await asyncio.sleep(poll_s)  # pacing the observation of the stack's APIs
        finally:
            stop.set()
            for task in cams:
                task.cancel()
            await asyncio.gather(*cams, return_exceptions=True)
            await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 60)
            await api.aclose()
            await apis.aclose()
    await prepare
    for task in measured.values():
        await task
    if view is not None:
        view(list(tracks.values()), began, "measuring recall at the end")
    for track in tracks.values():
        end_champion = await asyncio.to_thread(demo_report.champion, track.site)
        track.champion = end_champion or track.champion
        if track.site not in measured:  # no drift: one measurement on its normal conditions
            track.truth["before"] = await asyncio.to_thread(
                heldout.recall, end_champion, track, drifted=False
            )
            track.truth["after"] = None
        track.truth["end"] = await asyncio.to_thread(
            heldout.recall, end_champion, track, drifted=bool(track.drifts)
        )
    return list(tracks.values()), began


async def _measure_after_drift(prepare: asyncio.Task[None], heldout: Any, track: SiteTrack) -> None:
    from defectloop.cli import demo_report

    await prepare
    champion = await asyncio.to_thread(demo_report.champion, track.site)
    track.truth["before"] = await asyncio.to_thread(heldout.recall, champion, track, drifted=False)
    track.truth["after"] = await asyncio.to_thread(heldout.recall, champion, track, drifted=True)
