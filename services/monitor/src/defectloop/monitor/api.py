"""HTTP API of the monitor (JSON, OpenAPI at ``/docs``), scoped by site.

- ``GET /v1/sites``: every site with its state (the worst incident state of its tracks), its
  models and its open incidents;
- ``GET /v1/sites/{site}``: the same for one site;
- ``GET /v1/sites/{site}/performance``: measured figures per model version (champion and
  candidates) over the count window and the time window, per camera too, from the random stratum
  (headline), plus the other strata as diagnostics; every figure carries its n;
- ``GET /v1/sites/{site}/series``: the evaluated signals over time per model version (the chart),
  with the incidents that opened and closed on them;
- ``GET /v1/sites/{site}/drift``: the newest drift, label-free estimate and per-camera quality
  evaluations;
- ``GET /v1/sites/{site}/incidents``: incidents with their evidence (the published events);
- ``GET /v1/sites/{site}/scorecards``: each shadow/challenger against the champion, paired on the
  same random-stratum labels;
- ``GET /v1/sites/{site}/agreement``: inter-annotator agreement over the overlap images, for the
  site and per annotator pair (Cohen's kappa on the decision, IoU-matched boxes);
- ``GET /v1/sites/{site}/evaluation``: each detector's progress (observations seen at its last
  evaluation) and each incident track's state (ok, pending, degraded, recovering);
- ``GET /v1/sites/{site}/models``: the deployment history and the frozen baselines;
- ``GET /v1/sites/{site}/annotations``: annotation progress per UTC day: completed per annotator,
  skipped, and the running total (the dashboard's campaign chart).

``GET /dashboard`` is the ops dashboard (``dashboard/``), drawn in the browser from these routes.

Site-scoped (``viewers.py``): a viewer token (``Authorization: Bearer dlv_...``) sees only its
sites: ``/v1/sites`` lists those, any other ``/v1/sites/{site}...`` answers 403 ``forbidden_site``.
An API token (``dla_...``, :mod:`defectloop.common.authz`) of any role may read its sites: every
route here declares ``Permission.READ``.

Handlers are plain functions: FastAPI runs them in its thread pool, so database reads and the
statistics never block the event loop that consumes Kafka.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query

from defectloop.common import authz
from defectloop.common.errors import NotFoundError
from defectloop.common.events import ID_MAX_LENGTH, SITE_ID_PATTERN, DegradationKind, ModelRole
from defectloop.common.http_errors import ErrorBody
from defectloop.monitor import dashboard, incidents, performance, scorecard, viewers
from defectloop.monitor.records import Incident, StoredSignal
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore
from defectloop.vision.agreement import agreement, pairs_by_annotator

SiteParam = Annotated[
    str, Path(max_length=ID_MAX_LENGTH, pattern=SITE_ID_PATTERN, description="Site id.")
]
_SEVERITY = {"ok": 0, "pending": 1, "recovering": 2, "degraded": 3}


def _plain(value: Any) -> Any:
    """Dataclasses, enums and datetimes as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _figures(rows: Sequence[performance.LabelledPrediction]) -> dict[str, Any]:
    m = performance.image_metrics(rows)
    box = performance.box_ap50(rows)
    return {
        "n_images": m.n_images,
        "n_positive": m.n_positive,
        "precision": _plain(m.precision),
        "recall": _plain(m.recall),
        "f1": _plain(m.f1),
        "confusion": {"tp": m.tp, "fp": m.fp, "fn": m.fn, "tn": m.tn},
        "box_ap50": _plain(box),
        "window_start": rows[0].captured_at.isoformat() if rows else None,
        "window_end": rows[-1].captured_at.isoformat() if rows else None,
    }


def _signal(s: StoredSignal) -> dict[str, Any]:
    out: dict[str, Any] = _plain(s.signal)
    out["evaluated_at"] = s.evaluated_at.isoformat()
    return out


def _incident(i: Incident) -> dict[str, Any]:
    return {
        "incident_id": i.incident_id,
        "kind": i.kind.value,
        "metric": i.metric,
        "model_version": i.model_version,
        "camera_id": i.camera_id,
        "open": i.is_open,
        "opened_at": i.opened_at.isoformat(),
        "closed_at": i.closed_at.isoformat() if i.closed_at else None,
        "close_reason": i.close_reason,
        "degraded": i.degraded.model_dump(mode="json"),
        "recovered": i.recovered.model_dump(mode="json") if i.recovered else None,
    }


class MonitorApi:
    """What the routes read: the store, and the settings' windows and policies."""

    def __init__(self, store: MonitorStore, settings: MonitorSettings) -> None:
        self.store = store
        self.settings = settings

    def known_site(self, site_id: str) -> str:
        if site_id not in self.store.sites():
            raise NotFoundError(
                f"the monitor has no data for site {site_id!r}",
                hint="GET /v1/sites lists the sites it knows",
            )
        return site_id

    def summary(self, site_id: str) -> dict[str, Any]:
        tracks = [
            incidents.IncidentTrack.model_validate_json(t)
            for t in self.store.tracks(site_id).values()
        ]
        states = [t.state.value for t in tracks] or ["ok"]
        models = self.store.current_models(site_id)
        champion = models.get(ModelRole.CHAMPION)
        headline = None
        if champion is not None:
            rows = self.store.labelled(
                site_id, model_version=champion.model_version, last=self._window()
            )
            headline = _figures(rows) if rows else None
        open_incidents = self.store.incidents(site_id, open_only=True)
        return {
            "site_id": site_id,
            "state": max(states, key=lambda s: _SEVERITY[s]),
            "models": {role.value: _plain(d) for role, d in models.items()},
            "open_incidents": [_incident(i) for i in open_incidents],
            "headline": headline,
            "annotations": self.store.annotation_counts(site_id),
        }

    def _window(self) -> int:
        return self.settings.performance.window_images

    def performance(self, site_id: str, now: datetime) -> dict[str, Any]:
        models = self.store.current_models(site_id)
        days = self.settings.performance.window_days
        since = now - timedelta(days=days)
        out: list[dict[str, Any]] = []
        for role, deployment in sorted(models.items(), key=lambda kv: kv[0].value):
            version = deployment.model_version
            rows = self.store.labelled(site_id, model_version=version, role=role)
            cameras = sorted({r.camera_id for r in rows})
            every = self.store.labelled(
                site_id, model_version=version, role=role, sampling_reason=None
            )
            other = sorted({r.sampling_reason or "unknown" for r in every} - {"random"})
            out.append(
                {
                    "model_version": version,
                    "role": role.value,
                    "count_window": {
                        "images": self._window(),
                        **_figures(rows[-self._window() :]),
                    },
                    "time_window": {
                        "days": days,
                        **_figures([r for r in rows if r.captured_at >= since]),
                    },
                    "per_camera": {
                        c: _figures([r for r in rows if r.camera_id == c][-self._window() :])
                        for c in cameras
                    },
                    "diagnostics": {
                        reason: _figures([r for r in every if r.sampling_reason == reason])
                        for reason in other
                    },
                }
            )
        return {"site_id": site_id, "stratum": "random", "models": out}

    def series(
        self, site_id: str, kind: DegradationKind | None, metric: str | None, limit: int
    ) -> dict[str, Any]:
        signals = [
            s
            for s in self.store.signals(site_id, kind=kind, limit=limit)
            if metric is None or s.signal.key.metric == metric
        ]
        by_key: dict[str, list[dict[str, Any]]] = {}
        for s in signals:
            k = s.signal.key
            name = "/".join(x for x in (k.kind.value, k.metric, k.model_version, k.camera_id) if x)
            by_key.setdefault(name, []).append(_signal(s))
        marked = [
            _incident(i)
            for i in self.store.incidents(site_id, kind=kind)
            if metric is None or i.metric == metric
        ]
        deployments = [_plain(d) for d in self.store.deployments(site_id)]
        return {
            "site_id": site_id,
            "series": by_key,
            "incidents": marked,
            "deployments": deployments,
        }

    def drift(self, site_id: str) -> dict[str, Any]:
        latest = self.store.latest_signals(site_id)
        site_level = [
            _signal(s)
            for s in latest
            if s.signal.key.kind in (DegradationKind.DATA_DRIFT, DegradationKind.PREDICTION_DRIFT)
        ]
        per_camera = {
            s.signal.key.camera_id or "": _signal(s)
            for s in latest
            if s.signal.key.kind == DegradationKind.DATA_QUALITY
        }
        return {"site_id": site_id, "site": site_level, "cameras": per_camera}

    def scorecards(self, site_id: str) -> dict[str, Any]:
        models = self.store.current_models(site_id)
        champion = models.get(ModelRole.CHAMPION)
        cards: list[dict[str, Any]] = []
        for role in (ModelRole.SHADOW, ModelRole.CHALLENGER):
            candidate = models.get(role)
            if champion is None or candidate is None:
                continue
            pairs = self.store.paired(site_id, champion.model_version, candidate.model_version)
            entry: dict[str, Any] = {
                "role": role.value,
                "champion_version": champion.model_version,
                "candidate_version": candidate.model_version,
                "n_pairs": len(pairs),
            }
            if pairs:
                entry.update(_plain(scorecard.scorecard(pairs)))
            else:
                entry["verdict"] = scorecard.Verdict.NOT_ENOUGH_DATA.value
            cards.append(entry)
        return {"site_id": site_id, "stratum": "random", "scorecards": cards}

    def agreement(self, site_id: str) -> dict[str, Any]:
        labels = [
            (a.image_id, a.annotator, a.boxes)
            for a in self.store.annotations(site_id)
            if a.status.value == "completed"
        ]
        grouped = pairs_by_annotator(labels)
        everything = [p for pairs in grouped.values() for p in pairs]
        return {
            "site_id": site_id,
            **_plain(agreement(everything)),
            "by_pair": [
                {"annotators": list(names), **_plain(agreement(pairs))}
                for names, pairs in sorted(grouped.items())
            ],
            "use": (
                "reported, not used to weight labels: an image's first completed annotation "
                "is its ground truth"
            ),
        }

    def evaluation(self, site_id: str) -> dict[str, Any]:
        tracks = [
            incidents.IncidentTrack.model_validate_json(t)
            for t in self.store.tracks(site_id).values()
        ]
        return {
            "site_id": site_id,
            "observations_evaluated": self.store.cursors(site_id),
            # Events decided but not yet acknowledged by Kafka (published on the next loop turn).
            "outbox_pending": sum(e.site_id == site_id for e in self.store.pending_events()),
            "cadence": {
                "performance_labels": self.settings.performance_every_labels,
                "drift_images": self.settings.drift_every_images,
                "quality_frames": self.settings.quality_every_frames,
            },
            "tracks": [
                {
                    **_plain(t.key),
                    "state": t.state.value,
                    "incident_id": t.incident_id,
                    "recent_breaches": list(t.recent),
                    "exit_streak": t.exit_streak,
                }
                for t in tracks
            ],
        }

    def models(self, site_id: str) -> dict[str, Any]:
        deployments = self.store.deployments(site_id)
        versions = sorted({d.model_version for d in deployments})
        return {
            "site_id": site_id,
            "deployments": [_plain(d) for d in deployments],
            "baselines": {
                v: {m: _plain(b) for m, b in self.store.baselines(site_id, v).items()}
                for v in versions
            },
        }

    def annotations(self, site_id: str) -> dict[str, Any]:
        days: dict[str, dict[str, Any]] = {}
        for a in self.store.annotations(site_id):
            day = days.setdefault(a.labelled_at.date().isoformat(), {"completed": {}, "skipped": 0})
            if a.status.value == "completed":
                day["completed"][a.annotator] = day["completed"].get(a.annotator, 0) + 1
            else:
                day["skipped"] += 1
        total = 0
        out = []
        for date, counts in sorted(days.items()):
            total += sum(counts["completed"].values())
            out.append({"day": date, **counts, "total_completed": total})
        return {
            "site_id": site_id,
            "annotators": sorted({n for d in out for n in d["completed"]}),
            "days": out,
            "totals": self.store.annotation_counts(site_id),
        }


def build_router(store: MonitorStore, settings: MonitorSettings) -> APIRouter:
    viewers.create_table(store.engine)
    # API tokens (dla_, a role per site) and the monitor's own viewer tokens (dlv_: role viewer).
    auth = authz.Authz(
        store.engine,
        required=settings.viewer_tokens_required,
        others={viewers.TOKEN_PREFIX: viewers.principal_authenticator(store.engine)},
    )
    # A default, not Annotated[...]: annotations are strings here and a local does not resolve.
    reads = Depends(auth.require(authz.Permission.READ, site_param="site_id"))

    router = APIRouter(
        prefix="/v1",
        tags=["monitor"],
        dependencies=[reads],  # every route reads one site (or lists those in scope)
        responses={
            401: {"model": ErrorBody, "description": "Bad token (missing/invalid/expired_token)."},
            403: {"model": ErrorBody, "description": "forbidden_site or forbidden_role."},
            404: {"model": ErrorBody, "description": "No data for this site (not_found)."},
        },
    )
    api = MonitorApi(store, settings)

    @router.get("/sites")
    def sites(viewer: authz.Principal = reads) -> dict[str, Any]:
        """Every site the monitor has data for (those the viewer token may see), with its state,
        models and open incidents."""
        return {"sites": [api.summary(s) for s in viewer.visible(store.sites())]}

    @router.get("/sites/{site_id}")
    def site(site_id: SiteParam) -> dict[str, Any]:
        """One site's state, models, open incidents and headline figures (random stratum)."""
        return api.summary(api.known_site(site_id))

    @router.get("/sites/{site_id}/performance")
    def site_performance(site_id: SiteParam) -> dict[str, Any]:
        """Measured precision/recall/F1 (Wilson intervals), box AP@0.5, per model and camera."""
        return api.performance(api.known_site(site_id), datetime.now(UTC))

    @router.get("/sites/{site_id}/series")
    def site_series(
        site_id: SiteParam,
        kind: Annotated[DegradationKind | None, Query(description="Only this kind.")] = None,
        metric: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> dict[str, Any]:
        """Evaluations over time per (kind, metric, model version, camera), incidents marked."""
        return api.series(api.known_site(site_id), kind, metric, limit)

    @router.get("/sites/{site_id}/drift")
    def site_drift(site_id: SiteParam) -> dict[str, Any]:
        """Newest data drift, prediction drift, label-free estimate and per-camera quality."""
        return api.drift(api.known_site(site_id))

    @router.get("/sites/{site_id}/incidents")
    def site_incidents(
        site_id: SiteParam,
        open_only: Annotated[bool, Query(alias="open", description="Open ones only.")] = False,
    ) -> dict[str, Any]:
        """Incidents, newest first, with the events that opened and closed them."""
        found = store.incidents(api.known_site(site_id), open_only=open_only)
        return {"site_id": site_id, "incidents": [_incident(i) for i in found]}

    @router.get("/sites/{site_id}/scorecards")
    def site_scorecards(site_id: SiteParam) -> dict[str, Any]:
        """Each shadow/challenger against the champion on the same random-stratum labels."""
        return api.scorecards(api.known_site(site_id))

    @router.get("/sites/{site_id}/agreement")
    def site_agreement(site_id: SiteParam) -> dict[str, Any]:
        """Inter-annotator agreement on overlap images: the site, and per annotator pair."""
        return api.agreement(api.known_site(site_id))

    @router.get("/sites/{site_id}/evaluation")
    def site_evaluation(site_id: SiteParam) -> dict[str, Any]:
        """Where each detector and incident track stands: observations seen at the last
        evaluation (a detector evaluates again after ``cadence`` new ones) and track states."""
        return api.evaluation(api.known_site(site_id))

    @router.get("/sites/{site_id}/models")
    def site_models(site_id: SiteParam) -> dict[str, Any]:
        """Deployments of the site (oldest first) and each version's frozen baseline."""
        return api.models(api.known_site(site_id))

    @router.get("/sites/{site_id}/annotations")
    def site_annotations(site_id: SiteParam) -> dict[str, Any]:
        """Annotations per UTC day: completed per annotator, skipped, running total."""
        return api.annotations(api.known_site(site_id))

    return router


def install(app: FastAPI, store: MonitorStore, settings: MonitorSettings) -> None:
    app.include_router(build_router(store, settings))
    dashboard.install(app)
