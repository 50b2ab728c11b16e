"""Monitor benchmark: what the monitor says about simulated drifts, how soon, and how often falsely.

A site (A, three cameras) runs in simulated time. Every frame is rendered by the factory simulator,
measured with ingest's own quality code (``image.captured`` / ``image.rejected`` under the default
quality floor), predicted by the site's bootstrap model through ``libs/vision``'s runtime
(``prediction.made``), sampled for annotation with annotation-sync's own sampling rules (outlier,
uncertain, 10 % random; 200 labels per site per day; a monitor's ``labels.requested`` raises the
random share) and annotated by simulated annotators with their noise profiles (careful / sloppy;
careful ones skip blurry or obstructed frames) after a realistic delay (``annotation.completed``).
The events go, in time order, into the monitor's own ``MonitorStore.record`` and
``Evaluator.run_once(now)`` runs every ``--eval-minutes`` of simulated time, exactly as the service
does. Nothing of the monitor is re-implemented here.

Scenarios: ``no-drift`` (a long stretch: false alarms per 1,000 labels) and one per simulator drift
kind (``--kinds KIND[:SEVERITY]``; default severity 0.5, plus new-defect at 1.0), switched on after
``--reference-frames`` frames per camera: lighting and new-defect on the whole site, camera-shift,
blur, noise and obstruction on one camera (``cam-2``). Per scenario:
the first ``metric.degraded`` after the drift (kind, metric, camera), the labels and simulated
hours until it, every event, and the label-free recall estimate (CBPE calibrated on the first
random labels) against the recall realised on *every* post-drift image (simulator truth) and the
recall measured on the random labels.

Rendered and predicted frames are cached under ``.defectloop/bench-data/monitor`` (per bundle and
simulator version), so a second run only replays the monitor. Writes
``benchmarks/results/monitor.json`` and prints the Markdown table of ``docs/monitor.md``.

    .venv/bin/python benchmarks/bench_monitor.py            # default sizes
    .venv/bin/python benchmarks/bench_monitor.py --quick    # small, for iterating
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "monitor.json"
SITE = "A"
CAMERAS = ("cam-1", "cam-2", "cam-3")
AFFECTED = "cam-2"  # the camera of one-camera drifts
SEED = 7
T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
SITE_WIDE = ("lighting", "new-defect")
ONE_CAMERA = ("camera-shift", "blur", "noise", "obstruction")
TEAM = (("a-careful-1", "careful"), ("a-sloppy-2", "sloppy"), ("a-careful-3", "careful"))


# --- frames: rendered, measured, predicted (cached) ---------------------------------------------


def _frame_chunk(
    detector: Any, camera: str, start: int, stop: int, drift: tuple[str, int, float] | None
) -> list[dict[str, Any]]:
    """Render, measure (ingest's code) and predict frames ``start..stop`` of one camera."""
    from defectloop.common.events import image_id_for, sha256_hex
    from defectloop.factory_sim import SITES, Drift, render
    from defectloop.factory_sim.cameras import camera_seed
    from defectloop.ingest.quality import floor_violation, measure
    from defectloop.ingest.settings import QualityFloor

    drifts = [Drift(*drift)] if drift else []
    floor = QualityFloor()
    site = SITES[SITE]
    rows: list[dict[str, Any]] = []
    pixels = []
    for index in range(start, stop):
        img = render(site, index, camera_seed(SEED, camera), drifts)
        sha = sha256_hex(img.pixels.tobytes())
        quality = measure(img.pixels)
        rejected = floor_violation(quality, floor)
        rows.append(
            {
                "camera": camera,
                "index": index,
                "image_id": image_id_for(SITE, camera, sha),
                "sha256": sha,
                "width": int(img.pixels.shape[1]),
                "height": int(img.pixels.shape[0]),
                "drifts": dict(img.meta["drifts"]),
                "truth": [[b.label, b.x, b.y, b.w, b.h] for b in img.boxes],
                "quality": quality.model_dump(),
                "reject": None if rejected is None else [rejected[0].value, rejected[1]],
            }
        )
        pixels.append(img.pixels if rejected is None else None)
    todo = [i for i, p in enumerate(pixels) if p is not None]
    for i, pred in zip(todo, detector.predict([pixels[i] for i in todo]), strict=True):
        rows[i]["pred"] = {
            "boxes": [[d.label, d.x, d.y, d.w, d.h, d.score] for d in pred.detections],
            "defective": pred.defective,
            "score": pred.max_score,
            "threshold": pred.decision_threshold,
            "outlier_score": pred.outlier_score or 0.0,
            "outlier": pred.outlier,
        }
    return rows


class FrameCache:
    """Frames per (camera, drift, chunk) as JSON files; computed once per bundle and simulator."""

    CHUNK = 50

    def __init__(self, root: Path, bundle: Path) -> None:
        from defectloop.factory_sim import SIMULATOR_VERSION
        from defectloop.vision.manifest import load_manifest

        manifest = load_manifest(bundle)
        self.dir = root / f"{manifest.sha256[:12]}-sim{SIMULATOR_VERSION}-seed{SEED}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bundle = bundle
        self._detector: Any = None
        self.computed = 0

    def detector(self) -> Any:
        if self._detector is None:
            from defectloop.vision.runtime import Detector

            self._detector = Detector.from_bundle(self.bundle, providers="cpu")
        return self._detector

    def frames(
        self, camera: str, start: int, stop: int, drift: tuple[str, int, float] | None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        tag = "none" if drift is None else f"{drift[0]}-{drift[1]}-{drift[2]}"
        first = start - start % self.CHUNK
        for c0 in range(first, stop, self.CHUNK):
            path = self.dir / f"{camera}-{tag}-{c0}.json"
            if path.is_file():
                chunk = json.loads(path.read_text())
            else:
                chunk = _frame_chunk(self.detector(), camera, c0, c0 + self.CHUNK, drift)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(chunk))
                tmp.replace(path)
                self.computed += len(chunk)
            out.extend(r for r in chunk if start <= r["index"] < stop)
        return out


# --- the simulated site: events in time order ------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str | None
    cameras: tuple[str, ...]
    frames_per_camera: int
    drift_start: int | None
    severity: float = 0.5


@dataclass
class Sampler:
    """annotation-sync's sampling rules, budget and label requests, over simulated time."""

    daily_budget: int
    campaign_target: int
    base_share: float
    used: Counter[str] = field(default_factory=Counter)
    done: int = 0
    requests: list[tuple[datetime, float]] = field(default_factory=list)  # (expires, share)

    def decide(self, prediction: Any, now: datetime) -> str | None:
        from defectloop.annotation_sync.sampling import Quota, SamplingPolicy, decide

        active = [share for expires, share in self.requests if expires > now]
        policy = SamplingPolicy(random_share=max([self.base_share, *active]))
        day = now.date().isoformat()
        quota = Quota(
            self.used[day],
            self.daily_budget,
            self.done,
            self.campaign_target,
            bool(active),
            targeted_today=self.used[f"{day}/targeted"],
            targeted_budget_share=policy.targeted_budget_share,
        )
        decision = decide(prediction, policy, quota)
        if decision is None:
            return None
        self.used[day] += 1
        if decision.reason.value != "random":
            self.used[f"{day}/targeted"] += 1
        self.done += 1
        return decision.reason.value


def _annotation(frame: dict[str, Any], reason: str, created: datetime, at: datetime) -> Any:
    """What a simulated annotator of the team posts for this frame, as annotation.completed."""
    from defectloop.common.events import AnnotationCompleted, AnnotationStatus, Box
    from defectloop.factory_sim.annotators import PROFILES, annotate
    from defectloop.factory_sim.cameras import Truth, TruthBox

    truth = Truth(
        image_id=frame["image_id"],
        site=SITE,
        camera=frame["camera"],
        seed=SEED,
        index=frame["index"],
        width=frame["width"],
        height=frame["height"],
        boxes=tuple(TruthBox(*b) for b in frame["truth"]),
        drifts=frame["drifts"],
    )
    name, profile = TEAM[int(frame["sha256"][:4], 16) % len(TEAM)]
    work = annotate(truth, PROFILES[profile], name)
    boxes = []
    for r in work.result:
        if r.get("type") != "rectanglelabels":
            continue
        v, w, h = r["value"], frame["width"], frame["height"]
        boxes.append(
            Box(
                label=v["rectanglelabels"][0],
                x=v["x"] * w / 100,
                y=v["y"] * h / 100,
                w=v["width"] * w / 100,
                h=v["height"] * h / 100,
            )
        )
    skipped = work.skip_reason is not None
    return AnnotationCompleted(
        occurred_at=at,
        site_id=SITE,
        camera_id=frame["camera"],
        image_id=frame["image_id"],
        annotation_id=f"sim-{frame['image_id']}",
        annotator=name,
        status=AnnotationStatus.SKIPPED if skipped else AnnotationStatus.COMPLETED,
        boxes=() if skipped else tuple(boxes),
        skip_reason=work.skip_reason,
        sampling_reason=reason,
        lead_time_s=(at - created).total_seconds(),
    )


def _capture_events(frame: dict[str, Any], at: datetime, version: str) -> list[Any]:
    from defectloop.common.events import (
        ImageCaptured,
        ImageRejected,
        PredictionMade,
        QualityMetrics,
        RejectReason,
        ScoredBox,
        prediction_id_for,
    )

    base = {"site_id": SITE, "camera_id": frame["camera"]}
    if frame["reject"] is not None:
        reason, detail = frame["reject"]
        return [
            ImageRejected(
                occurred_at=at,
                reason=RejectReason(reason),
                detail=detail,
                sha256=frame["sha256"],
                **base,
            )
        ]
    uri = f"file:///sim/{frame['sha256']}.png"
    size = {"width": frame["width"], "height": frame["height"]}
    captured = ImageCaptured(
        occurred_at=at,
        image_id=frame["image_id"],
        sha256=frame["sha256"],
        blob_uri=uri,
        captured_at=at,
        quality=QualityMetrics(**frame["quality"]),
        **size,
        **base,
    )
    p = frame["pred"]
    made = at + timedelta(seconds=2)
    prediction = PredictionMade(
        occurred_at=made,
        prediction_id=prediction_id_for(frame["image_id"], version, "champion"),
        image_id=frame["image_id"],
        sha256=frame["sha256"],
        blob_uri=uri,
        boxes=tuple(
            ScoredBox(label=b[0], x=b[1], y=b[2], w=b[3], h=b[4], score=min(1.0, b[5]))
            for b in p["boxes"]
        ),
        defective=p["defective"],
        decision_score=min(1.0, p["score"]),
        decision_threshold=p["threshold"],
        model_name="centernet-gray",
        model_version=version,
        outlier_score=p["outlier_score"],
        outlier=p["outlier"],
        captured_at=at,
        queue_latency_ms=5.0,
        inference_latency_ms=20.0,
        **size,
        **base,
    )
    return [captured, prediction]


def _timeline(
    cache: FrameCache, scenario: Scenario, period_s: float
) -> Iterator[tuple[datetime, dict[str, Any]]]:
    """Every frame of the scenario with its capture time, cameras interleaved."""
    per_camera = []
    for k, camera in enumerate(CAMERAS):
        stop = scenario.frames_per_camera
        start_drift = scenario.drift_start if camera in scenario.cameras else None
        if start_drift is None:
            frames = cache.frames(camera, 0, stop, None)
        else:
            drift = (scenario.kind or "", start_drift, scenario.severity)
            frames = cache.frames(camera, 0, start_drift, None) + cache.frames(
                camera, start_drift, stop, drift
            )
        offset = period_s * k / len(CAMERAS)
        per_camera.append(
            [(T0 + timedelta(seconds=f["index"] * period_s + offset), f) for f in frames]
        )
    yield from heapq.merge(*per_camera, key=lambda tf: tf[0])


# --- one scenario through the real monitor ----------------------------------------------------------


@dataclass
class Outcome:
    events: list[dict[str, Any]] = field(default_factory=list)
    labels: list[tuple[datetime, str, bool]] = field(default_factory=list)  # (at, reason, scored)
    annotations: dict[str, Any] = field(default_factory=dict)  # image id -> annotation
    requests: int = 0
    wall_s: float = 0.0


def _run_monitor(
    cache: FrameCache,
    scenario: Scenario,
    *,
    bundle_version: str,
    baseline: dict[str, float],
    args: argparse.Namespace,
) -> tuple[Outcome, list[dict[str, Any]]]:
    from defectloop.common.db import make_engine
    from defectloop.common.events import (
        AnnotationCompleted,
        LabelsRequested,
        MetricDegraded,
        MetricRecovered,
        ModelDeployed,
        ModelRole,
    )
    from defectloop.monitor.evaluate import Evaluator
    from defectloop.monitor.settings import MonitorSettings
    from defectloop.monitor.store import MonitorStore

    started = time.perf_counter()
    store = MonitorStore(make_engine("sqlite://"))
    evaluator = Evaluator(store, MonitorSettings(sites=(SITE,)))
    sampler = Sampler(args.daily_budget, args.campaign_target, args.random_share)
    outcome = Outcome()
    frames: list[dict[str, Any]] = []
    store.record(
        ModelDeployed(
            occurred_at=T0 - timedelta(minutes=5),
            site_id=SITE,
            role=ModelRole.CHAMPION,
            model_name="centernet-gray",
            model_version=bundle_version,
            artifact_uri="file:///sim/bundle",
            sha256="0" * 64,
            baseline_metrics=baseline,
        )
    )
    pending: list[tuple[datetime, int, AnnotationCompleted]] = []
    seq = 0
    tick = timedelta(minutes=args.eval_minutes)
    next_eval = T0 + tick
    rng = np.random.default_rng(SEED)

    def evaluate(now: datetime) -> None:
        for event in evaluator.run_once(now):
            if isinstance(event, LabelsRequested):
                outcome.requests += 1
                sampler.requests.append((event.expires_at, event.random_share))
            elif isinstance(event, MetricDegraded | MetricRecovered):
                outcome.events.append(
                    {
                        "topic": event.topic,
                        "at": now,
                        "kind": event.kind.value,
                        "metric": event.metric,
                        "camera_id": event.camera_id,
                        "value": event.value,
                        "baseline": event.baseline,
                        "incident_id": event.incident_id,
                    }
                )

    def release(until: datetime) -> None:
        while pending and pending[0][0] <= until:
            at, _, annotation = heapq.heappop(pending)
            store.record(annotation)
            outcome.annotations[annotation.image_id] = annotation
            scored = annotation.status.value == "completed"
            outcome.labels.append((at, annotation.sampling_reason or "", scored))

    for at, frame in _timeline(cache, scenario, args.period_s):
        while next_eval <= at:
            release(next_eval)
            evaluate(next_eval)
            next_eval += tick
        release(at)
        frames.append({**frame, "at": at})
        for event in _capture_events(frame, at, bundle_version):
            store.record(event)
            if event.topic == "prediction.made":
                reason = sampler.decide(event, event.occurred_at)
                if reason is not None:
                    # Queue wait + annotation: a lognormal delay, median 1 h.
                    delay = timedelta(hours=float(rng.lognormal(0.0, 0.6)))
                    done = event.occurred_at + delay
                    seq += 1
                    heapq.heappush(
                        pending, (done, seq, _annotation(frame, reason, event.occurred_at, done))
                    )
    end = next_eval + timedelta(hours=3)  # let the last labels arrive and be evaluated
    while next_eval <= end:
        release(next_eval)
        evaluate(next_eval)
        next_eval += tick
    outcome.wall_s = time.perf_counter() - started
    return outcome, frames


# --- summaries --------------------------------------------------------------------------------------


def _recall(frames: Sequence[dict[str, Any]]) -> float | None:
    positives = [f for f in frames if f["truth"] and f.get("pred") is not None]
    if not positives:
        return None
    return sum(bool(f["pred"]["defective"]) for f in positives) / len(positives)


def _estimate_error(
    frames: list[dict[str, Any]], drift_at: datetime | None, args: Any
) -> dict[str, Any]:
    """CBPE calibrated like the monitor (first random labels), on the post-drift images."""
    from defectloop.monitor.estimate import estimate, fit_calibration

    predicted = [f for f in frames if f.get("pred") is not None]
    calib = [f for f in predicted if f.get("label") == "random"][: args.calibration_labels]
    if len(calib) < 20:
        return {}
    cal = fit_calibration(
        [f["pred"]["score"] for f in calib],
        [float(bool(f["label_boxes"])) for f in calib],
        calib[0]["pred"]["threshold"],
    )
    after = [f for f in predicted if drift_at is None or f["at"] >= drift_at]
    if drift_at is None:
        after = after[len(after) // 2 :]  # no drift: the second half, away from calibration
    est = estimate(cal, [f["pred"]["score"] for f in after])
    realised = _recall(after)
    labelled = [f for f in after if f.get("label") == "random" and f["label_boxes"] is not None]
    pos = [f for f in labelled if f["label_boxes"]]
    measured = sum(bool(f["pred"]["defective"]) for f in pos) / len(pos) if pos else None
    return {
        "estimated_recall": round(est.recall, 4),
        "realised_recall": None if realised is None else round(realised, 4),
        "measured_recall_random_labels": None if measured is None else round(measured, 4),
        "measured_n_positive": len(pos),
        "error": None if realised is None else round(est.recall - realised, 4),
        "atc_accuracy": round(est.atc_accuracy, 4),
        "realised_accuracy": round(
            float(np.mean([bool(f["truth"]) == f["pred"]["defective"] for f in after])), 4
        ),
        "calibration_labels": len(calib),
        "images": len(after),
    }


def _summarise(
    scenario: Scenario, outcome: Outcome, frames: list[dict[str, Any]], args: Any
) -> dict[str, Any]:
    drift_at = None
    if scenario.drift_start is not None:
        drift_at = min(
            f["at"]
            for f in frames
            if f["camera"] in scenario.cameras and f["index"] >= scenario.drift_start
        )
    degraded = [e for e in outcome.events if e["topic"] == "metric.degraded"]
    before = [e for e in degraded if drift_at is None or e["at"] < drift_at]
    after = [e for e in degraded if drift_at is not None and e["at"] >= drift_at]
    first = after[0] if after else None
    random_labels = [(at, scored) for at, reason, scored in outcome.labels if reason == "random"]
    by_reason = Counter(
        reason for at, reason, _ in outcome.labels if drift_at is not None and at >= drift_at
    )
    row: dict[str, Any] = {
        "scenario": scenario.name,
        "drift": scenario.kind,
        "cameras": list(scenario.cameras),
        "severity": scenario.severity if scenario.kind else None,
        "images": len(frames),
        "rejected": sum(f["reject"] is not None for f in frames),
        "labels_total": len(outcome.labels),
        "labels_random_scored": sum(s for _, s in random_labels),
        "labels_skipped": sum(not s for _, _, s in outcome.labels),
        "label_requests": outcome.requests,
        "labels_after_drift_by_reason": dict(by_reason),
        "false_alarms_before_drift": [_short(e) for e in before],
        "events": [_short(e, drift_at) for e in outcome.events],
        "monitor_wall_s": round(outcome.wall_s, 1),
    }
    if drift_at is not None:
        row["drift_at"] = drift_at.isoformat()
        if first is not None:
            row["detected"] = {
                **_short(first, drift_at),
                "random_labels_after_drift": sum(
                    s for at, s in random_labels if drift_at <= at <= first["at"]
                ),
                "images_after_drift": sum(drift_at <= f["at"] <= first["at"] for f in frames),
            }
        else:
            row["detected"] = None
    row["estimate"] = _estimate_error(frames, drift_at, args)
    return row


def _short(e: dict[str, Any], since: datetime | None = None) -> dict[str, Any]:
    out = {k: e[k] for k in ("topic", "kind", "metric", "camera_id", "incident_id")}
    out["value"] = round(e["value"], 4)
    out["at"] = e["at"].isoformat()
    if since is not None:
        out["hours_after_drift"] = round((e["at"] - since).total_seconds() / 3600, 2)
    return out


def _attach_labels(frames: list[dict[str, Any]], outcome_labels: dict[str, Any]) -> None:
    for f in frames:
        a = outcome_labels.get(f["image_id"])
        if a is not None:
            f["label"] = a.sampling_reason
            f["label_boxes"] = None if a.status.value == "skipped" else list(a.boxes)


def markdown(result: dict[str, Any]) -> str:
    rows = result["scenarios"]
    nd = next(r for r in rows if r["drift"] is None)
    labels = nd["labels_random_scored"]
    alarms = len(nd["false_alarms_before_drift"])
    per_k = 1000 * alarms / labels if labels else math.nan
    lines = [
        f"No drift: **{alarms}** `metric.degraded` over {nd['images']} images, "
        f"{nd['labels_total']} labels ({labels} scored random-stratum) = "
        f"**{per_k:.1f} false alarms per 1,000 random labels** "
        f"({nd['labels_total'] and 1000 * alarms / nd['labels_total']:.1f} per 1,000 labels of all strata).",
        "",
        "| drift (where) | first event (kind / metric / camera) | random labels until it | "
        "images until it | simulated hours | other events | est. recall | realised recall | "
        "measured (random labels) | estimate error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        where = (
            "site" if r["drift"] is None or len(r["cameras"]) == len(CAMERAS) else r["cameras"][0]
        )
        d = r.get("detected")
        est = r.get("estimate") or {}
        others = sorted(
            {
                f"{e['kind']}/{e['metric']}" + (f"/{e['camera_id']}" if e["camera_id"] else "")
                for e in r["events"]
                if e["topic"] == "metric.degraded"
                and (d is None or e["incident_id"] != d["incident_id"])
            }
        )
        if r["drift"] is None:
            first = f"{alarms} false alarm(s)"
            lab = img = hrs = "—"
        elif d is None:
            first, lab, img, hrs = "**none**", "—", "—", "—"
        else:
            cam = f" / {d['camera_id']}" if d["camera_id"] else ""
            first = f"{d['kind']} / {d['metric']}{cam}"
            lab, img, hrs = (
                str(d["random_labels_after_drift"]),
                str(d["images_after_drift"]),
                f"{d['hours_after_drift']:.1f}",
            )
        lines.append(
            f"| {r['scenario']} ({where}) | {first} | {lab} | {img} | {hrs} | "
            f"{', '.join(others) or '—'} | {_fmt(est.get('estimated_recall'))} | "
            f"{_fmt(est.get('realised_recall'))} | {_fmt(est.get('measured_recall_random_labels'))}"
            f" (n+={est.get('measured_n_positive', 0)}) | {_fmt(est.get('error'), signed=True)} |"
        )
    return "\n".join(lines)


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "—"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes while iterating")
    parser.add_argument("--reference-frames", type=int, default=300, help="per camera, pre-drift")
    parser.add_argument("--drift-frames", type=int, default=450, help="per camera, post-drift")
    parser.add_argument("--nodrift-frames", type=int, default=1500, help="per camera, no drift")
    parser.add_argument(
        "--period-s", type=float, default=144.0, help="seconds between frames of a camera"
    )
    parser.add_argument("--random-share", type=float, default=0.1)
    parser.add_argument("--daily-budget", type=int, default=200)
    parser.add_argument("--campaign-target", type=int, default=1000)
    parser.add_argument("--eval-minutes", type=float, default=30.0)
    parser.add_argument("--severity", type=float, default=0.5)
    parser.add_argument("--calibration-labels", type=int, default=100)
    parser.add_argument(
        "--kinds",
        nargs="*",
        default=[*SITE_WIDE, *ONE_CAMERA, "new-defect:1.0"],
        help="drift kinds, each KIND or KIND:SEVERITY",
    )
    parser.add_argument(
        "--cache", type=Path, default=ROOT / ".defectloop" / "bench-data" / "monitor"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--bundle", type=Path, help="model bundle (default: site A's bootstrap)")
    args = parser.parse_args()
    if args.quick:
        # The reference must hold the quality (150 + 100 frames per camera) and drift
        # (300 + 200 images of the site) windows before the drift starts.
        args.reference_frames, args.drift_frames, args.nodrift_frames = 260, 150, 500

    from defectloop.cli.bootstrap import bootstrap_bundle
    from defectloop.vision.manifest import load_manifest

    started = time.perf_counter()
    bundle = args.bundle or bootstrap_bundle(SITE)
    manifest = load_manifest(bundle)
    # What the trainer's deploy puts into model.deployed (governance: the manifest's metrics).
    baseline = {k: float(v) for k, v in manifest.metrics.items()}
    cache = FrameCache(args.cache, bundle)
    total = args.reference_frames + args.drift_frames
    scenarios = [Scenario("no-drift", None, (), args.nodrift_frames, None)]
    for spec in args.kinds:
        kind, _, severity = spec.partition(":")
        cams = CAMERAS if kind in SITE_WIDE else (AFFECTED,)
        level = float(severity) if severity else args.severity
        scenarios.append(Scenario(spec, kind, cams, total, args.reference_frames, level))
    rows = []
    for scenario in scenarios:
        t = time.perf_counter()
        outcome, frames = _run_monitor(
            cache, scenario, bundle_version=manifest.version, baseline=baseline, args=args
        )
        _attach_labels(frames, outcome.annotations)
        row = _summarise(scenario, outcome, frames, args)
        row["wall_s"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        print(
            json.dumps(
                {k: row[k] for k in ("scenario", "detected", "estimate", "wall_s") if k in row},
                default=str,
            )
        )
    result = {
        "benchmark": "monitor on the factory simulator",
        "command": "python benchmarks/bench_monitor.py" + (" --quick" if args.quick else ""),
        "site": SITE,
        "cameras": list(CAMERAS),
        "model": {"version": manifest.version, "baseline": baseline, "sha256": manifest.sha256},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "frames_computed": cache.computed,
        "cpu_count": os.cpu_count(),
        "loadavg_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "wall_s": round(time.perf_counter() - started, 1),
        "scenarios": rows,
    }
    result["markdown"] = markdown(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(result["markdown"])
    print(f"wrote {args.out} in {result['wall_s']} s")


if __name__ == "__main__":
    main()
