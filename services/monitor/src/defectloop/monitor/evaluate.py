"""One evaluation of every site: detectors -> signals -> incident state machine -> events.

:meth:`Evaluator.run_once` is synchronous and pure over the store (no Kafka, no clock of its own:
``now`` is a parameter), so the service runs it in a thread every few seconds and the simulator
harness drives it in-process with simulated time. Per site, in this order:

1. **Retire**: an open incident of a model that no longer serves the site as champion closes with
   ``metric.recovered`` reason ``model_retired`` (the incident was about that model; its successor
   starts with a clean slate and its own baseline). This is the "one recovery after a better model
   is deployed" of the issue: a better model is deployed -> the old model's incident closes once.
2. **Data quality** per camera (``quality.py``): a camera's first frames the monitor saw are its
   own reference (not reset when the model changes: a blurred camera stays blurred), its newest
   frames are compared with it. These incidents carry no model version.
3. **Excluded cameras** (drift): cameras with an open data-quality incident or whose newest
   quality evaluation departed on their own are left out of the site's drift windows.
4. **Performance** of the champion (``performance.py``) on the random stratum since it became
   champion, against its baseline: ``model.deployed``'s ``baseline_metrics`` (its own held-out
   evaluation) when present, else the figures of its first ``baseline_window_labels`` random
   labels at the site. A baseline is frozen the first time it is known. Each labelled frame is
   first judged on its own camera's quality (:class:`_FrameJudge`): a frame inside a window of its
   camera that departs on its own (the quality rule of ``quality.py``, isolation included) is
   left out, and a frame whose camera has not yet sent enough frames after it to be judged is
   held (counted later). So a blurred camera that makes the model divert good parts gives one
   ``data_quality`` incident and no performance one, whatever order and batching the labels and
   frames arrive in, while a site-wide change (every camera darker) still counts.
5. **Drift** (``drift.py``): the first ``drift_reference_images`` images after the deployment are
   the reference, the newest ``drift_window_images`` the window (data drift on ingest quality
   features and the outlier score; prediction drift on scores, defect rate, boxes per image, box
   area, boxes per class, outlier rate), and the label-free recall estimate (``estimate.py``)
   calibrated on the baseline window's random labels.

Each detector evaluates again only after enough new data (the settings' cadences): the M-of-N rule
counts evaluations, and two evaluations of the same data are one piece of evidence. Every opened
incident of kind performance or drift also asks annotation-sync for more random labels
(``labels.requested``; reason ``early_warning`` for the label-free estimate). Data-quality
incidents do not: labels of a blurred camera would not help. Tracks, cursors, signals, incidents
and the events to publish are saved in one transaction (the store's outbox); event ids derive
from incident ids, so a re-run never publishes a second ``metric.degraded`` for an incident.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from defectloop.common.errors import DefectloopError
from defectloop.common.events import (
    DegradationKind,
    Event,
    LabelsRequested,
    MetricDegraded,
    MetricRecovered,
    ModelRole,
    deterministic_id,
)
from defectloop.common.logging import get_logger
from defectloop.monitor import drift, estimate, incidents, performance, quality, stats
from defectloop.monitor.records import (
    Baseline,
    CapturedImage,
    Deployment,
    Incident,
    Rejection,
    StoredPrediction,
)
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.signals import Signal, SignalKey
from defectloop.monitor.store import MonitorStore

log = get_logger(__name__)

LABEL_ASKING_KINDS = frozenset(
    {DegradationKind.PERFORMANCE, DegradationKind.DATA_DRIFT, DegradationKind.PREDICTION_DRIFT}
)
_TICK = timedelta(microseconds=1)


@dataclass
class _SiteRun:
    """What one evaluation of one site accumulates before it is saved in one transaction."""

    site_id: str
    now: datetime
    tracks: dict[SignalKey, incidents.IncidentTrack]
    changed: set[SignalKey] = field(default_factory=set)
    cursors: dict[str, int] = field(default_factory=dict)
    signals: list[Signal] = field(default_factory=list)
    opened: list[MetricDegraded] = field(default_factory=list)
    closed: list[MetricRecovered] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


class Evaluator:
    """Turns the store's observations into incident events (see the module docstring)."""

    def __init__(self, store: MonitorStore, settings: MonitorSettings) -> None:
        self.store = store
        self.settings = settings
        # Final frame verdicts (image id -> left out?): a frame's verdict no longer changes once
        # its camera and the peers sent a whole window after it, so it is not judged again.
        self._left_out: dict[str, bool] = {}
        self._windows: dict[_WindowKey, quality.CameraDeparture | None] = {}
        # Per performance cursor: whether labels were held at its last evaluation, and the
        # site's frame count then (held labels are judged again when frames arrive).
        self._held: dict[str, bool] = {}
        self._frames_at: dict[str, int] = {}
        # Frames left out because their camera went quiet (image id -> camera, its frame count
        # then): not final, a lagging partition is not a dead camera; judged again only once that
        # camera sends frames, so a dead camera costs no re-judging. Per performance cursor: the
        # quiet cameras and their counts at its last judgement (new frames there trigger one).
        self._quiet: dict[str, tuple[str, int]] = {}
        self._quiet_at: dict[str, dict[str, int]] = {}

    def run_once(self, now: datetime) -> list[Event]:
        """Evaluate every site once; the events to publish (also saved in the store's outbox)."""
        events: list[Event] = []
        for site_id in self.settings.sites or self.store.sites():
            events.extend(self.evaluate_site(site_id, now))
        return events

    def evaluate_site(self, site_id: str, now: datetime) -> list[Event]:
        run = _SiteRun(
            site_id,
            now,
            {
                key: incidents.IncidentTrack.model_validate_json(text)
                for key, text in self.store.tracks(site_id).items()
            },
        )
        champion = self.store.current_models(site_id).get(ModelRole.CHAMPION)
        self._retire(run, champion.model_version if champion is not None else None)
        self._quality(run)
        excluded = self._excluded_cameras(run)
        if champion is not None:
            since = self.store.champion_since(site_id, champion.model_version)
            history = _History(self.store, champion, since)
            baseline = self._baseline(champion, history)
            self._performance(run, history, baseline)
            self._drift(run, history, excluded)
        self.store.save_evaluation(
            tracks={k: run.tracks[k].model_dump_json() for k in run.changed},
            cursors=run.cursors,
            signals=run.signals,
            opened=run.opened,
            closed=run.closed,
            outbox=run.events,
            evaluated_at=now,
        )
        for event in run.events:
            log.info(
                "monitor_event",
                topic=event.topic,
                site_id=site_id,
                incident_id=getattr(event, "incident_id", None),
                kind=str(getattr(event, "kind", "")) or None,
                metric=getattr(event, "metric", None),
                camera_id=getattr(event, "camera_id", None),
            )
        return run.events

    # -- incidents --

    def _step(self, run: _SiteRun, signal: Signal) -> None:
        run.signals.append(signal)
        track = run.tracks.get(signal.key) or incidents.IncidentTrack(key=signal.key)
        new, transition = incidents.step(track, signal, self.settings.incidents)
        run.tracks[signal.key] = new
        run.changed.add(signal.key)
        if transition is not None:
            self._publish(run, transition)

    def _publish(self, run: _SiteRun, transition: incidents.Transition) -> None:
        event = transition.to_event(run.now)
        run.events.append(event)
        if isinstance(event, MetricRecovered):
            run.closed.append(event)
            return
        run.opened.append(event)
        if event.kind in LABEL_ASKING_KINDS:
            run.events.append(self._labels_request(event))

    def _labels_request(self, incident: MetricDegraded) -> LabelsRequested:
        s = self.settings
        early = incident.metric == estimate.ESTIMATE_METRIC
        return LabelsRequested(
            event_id=deterministic_id("labels.requested", incident.incident_id),
            occurred_at=incident.occurred_at,
            site_id=incident.site_id,
            request_id=deterministic_id("labels-request", incident.incident_id),
            reason="early_warning" if early else "incident",
            incident_id=incident.incident_id,
            random_share=s.labels_random_share,
            target_labels=s.labels_target,
            expires_at=incident.occurred_at + timedelta(hours=s.labels_valid_hours),
        )

    def _retire(self, run: _SiteRun, champion_version: str | None) -> None:
        for inc in self.store.incidents(run.site_id, open_only=True):
            if inc.model_version is None or inc.model_version == champion_version:
                continue
            key = SignalKey(inc.site_id, inc.model_version, inc.kind, inc.metric, inc.camera_id)
            track = run.tracks.get(key)
            if track is not None and track.incident_id == inc.incident_id:
                new, transition = incidents.retire(track)
                run.tracks[key] = new
                run.changed.add(key)
                if transition is not None:
                    self._publish(run, transition)
                    continue
            recovered = _retired(inc, run.now)  # a track lost with its rows: close from the log
            run.events.append(recovered)
            run.closed.append(recovered)

    # -- data quality --

    def _quality(self, run: _SiteRun) -> None:
        s, site = self.settings, run.site_id
        name = f"quality/{site}"
        total = self.store.count_captured(site) + self.store.count_rejected(site)
        cursor = self.store.cursor(name)
        points = _checkpoints(cursor, total, s.quality_every_frames, s.max_replayed_evaluations)
        if not points:
            return
        run.cursors[name] = points[-1]
        # When each checkpoint was: the time of the site's frame number ``point``.
        fresh = total - points[0] + 1
        newest: list[CapturedImage | Rejection] = [
            *self.store.captured(site, last=fresh),
            *self.store.rejections(site, last=fresh),
        ]
        newest = sorted(newest, key=_time_of)[-fresh:]
        times = [_time_of(newest[p - points[0]]) for p in points if p - points[0] < len(newest)]
        frames = s.quality_reference_frames + s.quality_window_frames
        reference: dict[str, quality.CameraWindow] = {}
        recent: dict[str, list[CapturedImage | Rejection]] = {}
        for camera in self.store.cameras(site):
            seen = self.store.count_captured(site, camera_id=camera) + self.store.count_rejected(
                site, camera_id=camera
            )
            if seen < frames:
                continue  # the window would overlap the camera's own reference
            reference[camera] = _camera_window(
                camera, self._camera_timeline(site, camera, first=s.quality_reference_frames)
            )
            recent[camera] = self._camera_timeline(
                site, camera, last=s.quality_window_frames + fresh
            )
        if not recent:
            return
        # Isolation compares the cameras over the same time: a checkpoint waits until every
        # camera's frames up to it have arrived (ingest and the bus do not deliver the cameras in
        # lock-step), or a site-wide change seen first on one camera looks like that camera's own.
        # A camera the others have sent a whole window each past is stalled: not waited for.
        last_seen = {c: _time_of(items[-1]) for c, items in recent.items() if items}
        if last_seen:
            everything = sorted(_time_of(x) for items in recent.values() for x in items)
            stalled_after = s.quality_window_frames * (len(last_seen) - 1)
            live = [
                t
                for t in last_seen.values()
                if len(everything) - bisect.bisect_right(everything, t) < max(1, stalled_after)
            ]
            reached = min(live, default=max(last_seen.values()))
            ready = [p for p, t in zip(points, times, strict=False) if t <= reached]
            if not ready:
                run.cursors.pop(name, None)  # evaluated once the cameras have caught up
                return
            run.cursors[name] = ready[-1]
            times = [t for t in times if t <= reached]
        for at in sorted(set(times)):
            current = {
                camera: _camera_window(
                    camera, [x for x in items if _time_of(x) <= at][-s.quality_window_frames :]
                )
                for camera, items in recent.items()
            }
            for signal in quality.quality_signals(
                reference, current, site_id=site, model_version=None, policy=s.quality
            ):
                self._step(run, signal)

    def _camera_timeline(
        self, site_id: str, camera_id: str, *, first: int | None = None, last: int | None = None
    ) -> list[CapturedImage | Rejection]:
        """A camera's first or last frames, accepted and rejected interleaved by time."""
        frames = self.store.captured(site_id, camera_id=camera_id, first=first, last=last)
        rejected = self.store.rejections(site_id, camera_id=camera_id, first=first, last=last)
        timeline: list[CapturedImage | Rejection] = sorted([*frames, *rejected], key=_time_of)
        return timeline[:first] if first is not None else timeline[-(last or 0) :]

    def _frames_not_counted(
        self, site_id: str, rows: Sequence[performance.LabelledPrediction]
    ) -> tuple[frozenset[str], int]:
        """Image ids of labelled frames performance does not count now: left out (their camera
        departed on its own around them) or held (not judged yet), and how many are held. See
        :class:`_FrameJudge`."""
        s = self.settings
        # Counted before the frames are read: a frame recorded in between is judged again later.
        seen = {
            camera: self._camera_frames(site_id, camera) for camera in self.store.cameras(site_id)
        }
        still_quiet = {
            r.image_id
            for r in rows
            if (q := self._quiet.get(r.image_id)) is not None and seen.get(q[0]) == q[1]
        }
        todo = [
            r for r in rows if r.image_id not in self._left_out and r.image_id not in still_quiet
        ]
        skipped = {r.image_id for r in rows if self._left_out.get(r.image_id, False)} | still_quiet
        if not todo:
            return frozenset(skipped), 0
        since = min(r.captured_at for r in todo)
        reference: dict[str, quality.CameraWindow] = {}
        reference_end: dict[str, datetime] = {}
        timelines: dict[str, _Timeline] = {}
        for camera in self.store.cameras(site_id):
            first = self._camera_timeline(site_id, camera, first=s.quality_reference_frames)
            if len(first) < s.quality_reference_frames:
                continue  # no reference yet: nothing to judge this camera's frames against
            reference[camera] = _camera_window(camera, first)
            reference_end[camera] = _time_of(first[-1])
            timelines[camera] = _Timeline(self._camera_span(site_id, camera, since))
        if len(self._windows) > _MEMO_LIMIT:
            self._windows.clear()
        judge = _FrameJudge(
            reference, reference_end, timelines, s.quality_window_frames, s.quality, self._windows
        )
        counts = {v: 0 for v in _Verdict}
        for r in todo:
            verdict, final = judge.verdict(r.camera_id, r.image_id, r.captured_at)
            counts[verdict] += 1
            if verdict is not _Verdict.COUNTED:
                skipped.add(r.image_id)
            if verdict is _Verdict.QUIET:
                self._quiet[r.image_id] = (r.camera_id, seen.get(r.camera_id, 0))
            else:
                self._quiet.pop(r.image_id, None)
            if final:
                self._left_out[r.image_id] = verdict is _Verdict.LEFT_OUT
        log.info(
            "frames_judged",
            site_id=site_id,
            **{str(v): n for v, n in counts.items()},
            left_out_total=sum(self._left_out.get(r.image_id, False) for r in rows),
            quiet_total=len(still_quiet) + counts[_Verdict.QUIET],
        )
        return frozenset(skipped), counts[_Verdict.HELD]

    def _camera_frames(self, site_id: str, camera_id: str) -> int:
        """How many frames (accepted and rejected) the camera sent so far."""
        return self.store.count_captured(site_id, camera_id=camera_id) + self.store.count_rejected(
            site_id, camera_id=camera_id
        )

    def _camera_span(
        self, site_id: str, camera_id: str, since: datetime
    ) -> list[CapturedImage | Rejection]:
        """A camera's frames from ``since`` on, after the window's worth of frames before it."""
        w = self.settings.quality_window_frames
        before: list[CapturedImage | Rejection] = [
            *self.store.captured(site_id, camera_id=camera_id, until=since, last=w),
            *self.store.rejections(site_id, camera_id=camera_id, until=since, last=w),
        ]
        after: list[CapturedImage | Rejection] = [
            *self.store.captured(site_id, camera_id=camera_id, since=since),
            *self.store.rejections(site_id, camera_id=camera_id, since=since),
        ]
        return sorted(before, key=_time_of)[-w:] + sorted(after, key=_time_of)

    def _excluded_cameras(self, run: _SiteRun) -> frozenset[str]:
        """Cameras left out of the site's drift windows: an open data-quality incident, or
        departing on their own in the newest quality evaluation."""
        open_dq = {
            i.camera_id
            for i in self.store.incidents(
                run.site_id, open_only=True, kind=DegradationKind.DATA_QUALITY
            )
            if i.camera_id
        }
        newest = [s for s in run.signals if s.key.kind == DegradationKind.DATA_QUALITY] or [
            s.signal
            for s in self.store.latest_signals(run.site_id)
            if s.signal.key.kind == DegradationKind.DATA_QUALITY
        ]
        departing = {s.key.camera_id for s in newest if s.breached and s.key.camera_id}
        return frozenset(open_dq | departing)

    # -- performance --

    def _baseline(self, champion: Deployment, history: _History) -> dict[str, float]:
        """The champion's baseline per watched metric, frozen the first time it is known."""
        site, version = champion.site_id, champion.model_version
        policy = self.settings.performance
        frozen = {m: b.value for m, b in self.store.baselines(site, version).items()}
        missing = [m for m in policy.metrics if m not in frozen]
        if not missing:
            return frozen
        deployed = {
            m: value for m in missing if (value := _deployed_baseline(champion, m)) is not None
        }
        found = [Baseline(site, version, m, v, "deployment", 0, 0) for m, v in deployed.items()]
        for metric in (m for m in missing if m not in deployed):
            first = self._first_window(history.rows(), metric)
            if first is not None:
                found.append(first)
        if found:
            self.store.freeze_baselines(found)
            for b in found:
                log.info(
                    "baseline_frozen",
                    site_id=site,
                    model_version=version,
                    metric=b.metric,
                    value=round(b.value, 4),
                    source=b.source,
                    sample_size=b.sample_size,
                )
        return {**frozen, **{b.metric: b.value for b in found}}

    def _first_window(
        self, rows: Sequence[performance.LabelledPrediction], metric: str
    ) -> Baseline | None:
        """The metric over the model's first random labels at the site, or None while too few.

        The window grows until it holds ``baseline_window_labels`` images and
        ``baseline_min_positive`` in the metric's denominator. Its figure is a sample too, so the
        baseline is the Wilson lower bound at ``baseline_confidence``: a lucky first window must
        not turn the model's normal performance into an incident later.
        """
        s = self.settings
        den = hits = 0
        for n, r in enumerate(rows, start=1):
            counted = r.truth_defective if metric == "recall" else r.predicted_defective
            if counted:
                den += 1
                hits += int(r.truth_defective and r.predicted_defective)
            if n >= s.baseline_window_labels and den >= s.baseline_min_positive:
                low, _ = stats.wilson_interval(hits, den, s.baseline_confidence)
                n_pos = sum(x.truth_defective for x in rows[:n])
                return Baseline(r.site_id, r.model_version, metric, low, "first_window", n, n_pos)
        return None

    def _performance(self, run: _SiteRun, history: _History, baseline: dict[str, float]) -> None:
        """Performance signals at every ``performance_every_labels`` *counted* labels.

        Two cursors: ``performance/<site>/<version>`` counts the labels that arrived (the API's
        progress figure), ``performance-counted/<site>/<version>`` the labels performance counted
        (their frames judged and not left out: :class:`_FrameJudge`). A held label becomes
        countable when its camera's next frames arrive, with no new label, so frames arriving
        while labels are held also trigger an evaluation.
        """
        site, version = run.site_id, history.version
        name, counted_name = (
            f"performance/{site}/{version}",
            f"performance-counted/{site}/{version}",
        )
        s, every = self.settings, self.settings.performance_every_labels
        n = self.store.count_labelled(
            site, model_version=version, role=ModelRole.CHAMPION, since=history.since
        )
        arrived = _checkpoints(self.store.cursor(name), n, every, s.max_replayed_evaluations)
        frames = self.store.count_captured(site) + self.store.count_rejected(site)
        # Held labels are judged again once as many new frames came as a label cadence, not at
        # every frame (each judgement reads the labels' frames back).
        waiting = self._held.get(name, True) and frames - self._frames_at.get(name, -every) >= every
        woken = any(
            self._camera_frames(site, camera) != count
            for camera, count in self._quiet_at.get(name, {}).items()
        )
        if not baseline or not (arrived or waiting or woken):
            return
        if arrived:
            run.cursors[name] = arrived[-1]
        rows = history.rows()
        skipped, held = self._frames_not_counted(site, rows)
        self._held[name], self._frames_at[name] = held > 0, frames
        row_ids = {r.image_id for r in rows}
        self._quiet_at[name] = {
            camera: count
            for image_id, (camera, count) in self._quiet.items()
            if image_id in row_ids
        }
        # Replayed in the order the labels came: a batch of 200 labels is 20 evaluations, as if
        # they had trickled in, so the M-of-N rule does not depend on how Kafka batched them.
        counted = sorted(
            (r for r in rows if r.image_id not in skipped),
            key=lambda r: (r.labelled_at, r.image_id),
        )
        points = _checkpoints(
            self.store.cursor(counted_name), len(counted), every, s.max_replayed_evaluations
        )
        if not points:
            return
        run.cursors[counted_name] = points[-1]
        for point in points:
            at = min(counted[point - 1].labelled_at, run.now)
            for signal in performance.performance_signals(
                counted[:point],
                site_id=site,
                model_version=version,
                baseline=baseline,
                policy=s.performance,
                now=at,
            ):
                self._step(run, signal)

    # -- drift and the label-free estimate --

    def _drift(self, run: _SiteRun, history: _History, excluded: frozenset[str]) -> None:
        s, site, version, since = self.settings, run.site_id, history.version, history.since
        name = f"drift/{site}/{version}"
        n = self.store.count_captured(site, since=since)
        cursor = self.store.cursor(name)
        points = _checkpoints(cursor, n, s.drift_every_images, s.max_replayed_evaluations)
        if not points:
            return
        run.cursors[name] = points[-1]
        window, first = s.drift_window_images, s.drift_reference_images
        points = [p for p in points if p >= first + window]
        if not points:
            return
        ref = self._observations(site, version, self.store.captured(site, since=since, first=first))
        recent_images = self.store.captured(site, since=since, last=n - points[0] + window)
        recent = self._observations(site, version, recent_images)
        by_id = {p.image_id: p for p in recent.predictions}
        calibration_rows = history.rows()[: s.baseline_window_labels]
        for point in points:
            end = len(recent_images) - (n - point)
            images = recent_images[max(0, end - window) : end]
            cur = _Window(
                drift.observations(
                    images, [by_id[i.image_id] for i in images if i.image_id in by_id]
                ),
                [by_id[i.image_id] for i in images if i.image_id in by_id],
            )
            self._drift_at(run, version, ref, cur, excluded, calibration_rows)

    def _drift_at(
        self,
        run: _SiteRun,
        version: str,
        ref: _Window,
        cur: _Window,
        excluded: frozenset[str],
        calibration_rows: Sequence[performance.LabelledPrediction],
    ) -> None:
        s, site = self.settings, run.site_id
        for detector in (drift.data_drift_signals, drift.prediction_drift_signals):
            signals = detector(
                ref.observations,
                cur.observations,
                site_id=site,
                model_version=version,
                policy=s.drift,
                exclude_cameras=excluded,
            )
            for signal in signals:
                self._step(run, signal)
        ref_scores = [p.decision_score for p in ref.predictions if p.camera_id not in excluded]
        cur_preds = [p for p in cur.predictions if p.camera_id not in excluded]
        if not cur_preds or not ref_scores:
            return
        calibration = _calibration(calibration_rows, cur_preds[0].decision_threshold)
        for signal in estimate.estimate_signals(
            calibration,
            ref_scores,
            [p.decision_score for p in cur_preds],
            site_id=site,
            model_version=version,
            window_start=cur_preds[0].captured_at,
            window_end=cur_preds[-1].captured_at,
            policy=s.estimate,
        ):
            self._step(run, signal)

    def _observations(self, site_id: str, version: str, images: Sequence[CapturedImage]) -> _Window:
        if not images:
            return _Window([], [])
        preds = {
            p.image_id: p
            for p in self.store.predictions(
                site_id,
                model_version=version,
                role=ModelRole.CHAMPION,
                since=images[0].captured_at,
                until=images[-1].captured_at + _TICK,
            )
        }
        matched = [preds[i.image_id] for i in images if i.image_id in preds]
        return _Window(drift.observations(images, matched), matched)


_WindowKey = tuple[str, datetime, datetime, datetime, int]  # camera, reference end, span, frames
_MEMO_LIMIT = 200_000  # windows remembered between evaluations (then forgotten all at once)


class _Verdict(StrEnum):
    COUNTED = "counted"
    LEFT_OUT = "left_out"
    HELD = "held"
    QUIET = "quiet"  # left out until its camera sends frames again


class _Timeline:
    """One camera's frames (accepted and rejected) in capture order, searchable by time and id."""

    def __init__(self, items: Sequence[CapturedImage | Rejection]) -> None:
        self.items = list(items)
        self.times = [_time_of(x) for x in self.items]
        self.position = {
            x.image_id: i for i, x in enumerate(self.items) if isinstance(x, CapturedImage)
        }


class _FrameJudge:
    """Whether performance may count one labelled frame, judged on that frame's own camera.

    Why per frame: the camera-level quality state is a verdict on the camera's *newest* frames at
    evaluation time, while performance replays every label since the deployment. A label that
    arrives before its camera's quality detector has seen enough blurred frames to breach (labels
    published with, or before, their frames; a Kafka batch split across topics) was counted as a
    model error, and the blurred camera's diverted good parts opened a performance incident
    beside its data-quality one (CI, order-dependent). Here each labelled frame gets the verdict
    of the quality rule (``quality.camera_departures``: same tests, same isolation among the
    site's cameras) on windows of its own camera: the ``window`` frames *ending* at it (it is late
    in a fault) and the frames *starting* at it, ``policy.min_window`` of them and then the whole
    ``window`` (it is early in one: a blur that starts at this frame fills them). Fixed lengths:
    a window's frames do not change as newer frames arrive, so each is tested once (memoised).
    Peers are judged on their frames up to the same time, so a change every camera shares
    (lighting, a new part) is not isolated and counts.

    Why not a per-frame range test (is *this* frame's sharpness outside its camera's range?): a
    mild blur (simulator, severity 0.25) leaves nearly every blurred frame inside the range; only
    a window of them departs.

    * ``LEFT_OUT``: either window departs on its own (isolated), e.g. a blurred camera's frame;
    * ``HELD``: neither departs yet, but fewer than ``min(window, policy.min_window)`` frames of
      the camera follow it (or the frame itself is not recorded yet): it cannot be told from the
      first frame of a fault, so it is not counted until they arrive;
    * ``QUIET``: held, but every peer sent a whole window more meanwhile: its camera went quiet,
      or its frames lag (a partition read later, a read between two recorded batches). Left out,
      never counted unjudged, but not for good: judged again once its camera sends frames (a
      final leave-out lost a lagging camera's labels for good: the service test, CI);
    * ``COUNTED`` otherwise; frames of a camera's own reference (its first frames) always count.

    A verdict is *final* (cached by the evaluator) once the forward window is full and every
    peer sent a frame after it (or has been silent since before the frame): later arrivals no
    longer change the windows it was judged on.
    Before that it is judged again at each evaluation, so a frame left out only because the
    peers' frames had not arrived yet (a site-wide change looks isolated for a moment) counts once
    they do; the error goes towards leaving a frame out, never towards counting a faulty one.
    """

    def __init__(
        self,
        reference: Mapping[str, quality.CameraWindow],
        reference_end: Mapping[str, datetime],
        timelines: Mapping[str, _Timeline],
        window: int,
        policy: quality.QualityPolicy,
        memo: dict[_WindowKey, quality.CameraDeparture | None],
    ) -> None:
        self.reference = reference
        self.reference_end = reference_end
        self.timelines = timelines
        self.window = window
        self.policy = policy
        self.judged_after = min(window, policy.min_window)
        self.memo = memo

    def verdict(
        self, camera_id: str, image_id: str, captured_at: datetime
    ) -> tuple[_Verdict, bool]:
        """The frame's verdict and whether it is final."""
        timeline = self.timelines.get(camera_id)
        if timeline is None or captured_at <= self.reference_end[camera_id]:
            return _Verdict.COUNTED, timeline is not None  # no reference yet, or part of it
        i = timeline.position.get(image_id)
        if i is None:
            return _Verdict.HELD, False  # its frame is not recorded yet: nothing to judge
        w, short, n = self.window, self.judged_after, len(timeline.items)
        # Forward windows of two fixed lengths only (the detector's minimum, then the full
        # window): a window's frames do not change as newer frames arrive, so each is tested once.
        windows = [(max(0, i - w + 1), i + 1)]
        windows += [(i, i + length) for length in sorted({short, w}) if i + length <= n]
        full = i + w <= n
        end = timeline.times[min(n, i + w) - 1]
        # A peer is done with this frame once it sent a frame after the window, or if it has been
        # silent since before the frame (a dead camera must not keep every verdict open forever).
        peers_done = all(
            t.times and (t.times[-1] > end or t.times[-1] < captured_at)
            for c, t in self.timelines.items()
            if c != camera_id
        )
        final = full and peers_done
        if any(self._departs(camera_id, *span) for span in windows):
            return _Verdict.LEFT_OUT, final
        if i + short > n:
            # Its camera went quiet (or lags) while every peer sent a whole window more: left out
            # (never counted unjudged) until its camera sends frames again, not held: a dead
            # camera must not keep the evaluator re-judging at every label cadence.
            peers = [t for c, t in self.timelines.items() if c != camera_id]
            if peers and all(
                len(t.times) - bisect.bisect_right(t.times, captured_at) >= w for t in peers
            ):
                return _Verdict.QUIET, False
            return _Verdict.HELD, False
        return _Verdict.COUNTED, final

    def _departs(self, camera_id: str, start: int, stop: int) -> bool:
        """Whether the camera's frames [start, stop) depart from its reference on their own."""
        timeline = self.timelines[camera_id]
        found = self._departure(camera_id, timeline, start, stop)
        if found is None or not found.departed:
            return False
        end = timeline.times[stop - 1]
        peers = []
        for peer, other in self.timelines.items():
            if peer != camera_id:
                last = bisect.bisect_right(other.times, end)
                d = self._departure(peer, other, max(0, last - self.window), last)
                if d is not None:
                    peers.append(d)
        return bool(quality.isolated_features(found, peers, self.policy))

    def _departure(
        self, camera_id: str, timeline: _Timeline, start: int, stop: int
    ) -> quality.CameraDeparture | None:
        """The quality rule on frames [start, stop) of a camera, memoised by the window's span:
        a window that no frame entered or left is not tested twice (frames arrive in order)."""
        if stop <= start:
            return None
        key = (
            camera_id,
            self.reference_end[camera_id],
            timeline.times[start],
            timeline.times[stop - 1],
            stop - start,
        )
        if key not in self.memo:
            frames = timeline.items[start:stop]
            self.memo[key] = quality.departure(
                self.reference[camera_id], _camera_window(camera_id, frames), self.policy
            )
        return self.memo[key]


class _History:
    """The champion's random-stratum labelled predictions since it became champion, loaded once
    per evaluation and only if a detector needs them."""

    def __init__(self, store: MonitorStore, champion: Deployment, since: datetime | None) -> None:
        self._store = store
        self.site_id = champion.site_id
        self.version = champion.model_version
        self.since = since
        self._rows: list[performance.LabelledPrediction] | None = None

    def rows(self) -> list[performance.LabelledPrediction]:
        if self._rows is None:
            self._rows = self._store.labelled(
                self.site_id, model_version=self.version, role=ModelRole.CHAMPION, since=self.since
            )
        return self._rows


@dataclass(frozen=True)
class _Window:
    observations: list[drift.Observation]
    predictions: list[StoredPrediction]


def _checkpoints(cursor: int, total: int, every: int, most: int) -> list[int]:
    """Observation counts at which a detector evaluates: every ``every`` new observations since
    ``cursor``, the newest ``most`` of them (older ones are skipped, not piled up)."""
    points = list(range(cursor + every, total + 1, every))
    return points[-most:]


def _camera_window(
    camera_id: str, items: Sequence[CapturedImage | Rejection]
) -> quality.CameraWindow:
    windows = quality.camera_windows(
        drift.observations(x for x in items if isinstance(x, CapturedImage)),
        [x for x in items if isinstance(x, Rejection)],
    )
    return windows.get(camera_id) or quality.CameraWindow(camera_id, [])


def _time_of(item: CapturedImage | Rejection) -> datetime:
    return item.captured_at if isinstance(item, CapturedImage) else item.occurred_at


def _calibration(
    rows: Sequence[performance.LabelledPrediction], decision_threshold: float
) -> estimate.Calibration | None:
    if not rows:
        return None
    try:
        return estimate.fit_calibration(
            [r.decision_score for r in rows], [r.truth_defective for r in rows], decision_threshold
        )
    except DefectloopError as exc:  # e.g. a window of one class only: no estimate yet
        log.info("calibration_unavailable", reason=exc.reason, error=str(exc))
        return None


def _retired(incident: Incident, now: datetime) -> MetricRecovered:
    d = incident.degraded
    return MetricRecovered(
        event_id=deterministic_id("incident", "closed", incident.incident_id),
        occurred_at=now,
        site_id=d.site_id,
        model_version=d.model_version,
        kind=d.kind,
        metric=d.metric,
        value=d.value,
        baseline=d.baseline,
        threshold=d.threshold,
        window_start=d.window_start,
        window_end=d.window_end,
        sample_size=d.sample_size,
        camera_id=d.camera_id,
        incident_id=incident.incident_id,
        reason="model_retired",
    )


def _deployed_baseline(champion: Deployment, metric: str) -> float | None:
    """The metric's held-out value carried by ``model.deployed``.

    The trainer records its hold-out evaluation as ``val_<metric>`` (``val_recall``...); other
    producers may send the bare name. Either is the model's own evaluation at training time.
    """
    metrics = champion.baseline_metrics
    for name in (metric, f"val_{metric}"):
        if name in metrics:
            return float(metrics[name])
    return None
