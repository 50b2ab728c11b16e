"""The incident state machine: when a run of signals opens or closes an incident.

Per (site, model version, kind, metric[, camera]) — one :class:`IncidentTrack` per
:class:`~defectloop.monitor.signals.SignalKey`::

    OK --breach--> PENDING --M of N breaches--> DEGRADED --within tolerance--> RECOVERING
    PENDING --fewer than M breaches in N--> OK          RECOVERING --K in a row--> OK
                                                        RECOVERING --anything else--> DEGRADED

Defaults (notes R3): enter after the breach holds in **2 of 3** consecutive evaluations, leave
after **2** consecutive evaluations within the (smaller) exit tolerance. The pending and
recovering states are SageMaker's "datapoints to alarm" and Prometheus's ``for`` /
``keep_firing_for``: one noisy evaluation neither opens nor closes an incident (notes §2.6).

Exactly one ``opened`` transition per incident (the caller publishes one ``metric.degraded``) and
one ``closed`` (one ``metric.recovered``); RECOVERING falling back to DEGRADED is the same
incident. A signal without enough data changes nothing. :func:`step` is pure: the caller persists
the returned track (it is a frozen pydantic model, so ``model_dump_json`` round-trips).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from defectloop.common.errors import InvalidInputError
from defectloop.common.events import MetricDegraded, MetricRecovered, deterministic_id
from defectloop.monitor.signals import Signal, SignalKey


class IncidentState(StrEnum):
    OK = "ok"
    PENDING = "pending"
    DEGRADED = "degraded"
    RECOVERING = "recovering"


class TransitionKind(StrEnum):
    OPENED = "opened"
    CLOSED = "closed"


class IncidentPolicy(BaseModel):
    """Hysteresis: M breaches in N consecutive evaluations to enter, K in a row to leave."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enter_breaches: int = Field(2, ge=1, description="M: breaching evaluations needed to open.")
    enter_window: int = Field(3, ge=1, description="N: consecutive evaluations M must fall in.")
    exit_consecutive: int = Field(
        2, ge=1, description="K: consecutive within-tolerance evaluations needed to close."
    )

    @model_validator(mode="after")
    def _m_within_n(self) -> IncidentPolicy:
        if self.enter_breaches > self.enter_window:
            raise ValueError(
                f"enter_breaches ({self.enter_breaches}) > enter_window ({self.enter_window}):"
                " M of N needs M <= N"
            )
        return self


class IncidentTrack(BaseModel):
    """Where one key stands. ``recent``: breach flags since the first breach while PENDING."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: SignalKey
    state: IncidentState = IncidentState.OK
    recent: tuple[bool, ...] = ()
    exit_streak: int = 0
    incident_id: str | None = None
    opened_at: datetime | None = None
    change_point_at: datetime | None = None
    last_signal: Signal | None = None
    incidents_opened: int = 0


@dataclass(frozen=True)
class Transition:
    """An incident opened or closed; ``signal`` is the evaluation that decided it."""

    kind: TransitionKind
    key: SignalKey
    incident_id: str
    signal: Signal
    reason: str = "recovered"

    def to_event(self, occurred_at: datetime) -> MetricDegraded | MetricRecovered:
        """The event to publish; its id derives from the incident, so a re-run dedupes."""
        s, k = self.signal, self.key
        common = {
            "event_id": deterministic_id("incident", self.kind.value, self.incident_id),
            "occurred_at": occurred_at,
            "site_id": k.site_id,
            "model_version": k.model_version,
            "kind": k.kind,
            "metric": k.metric,
            "value": s.value,
            "baseline": s.baseline,
            "threshold": s.threshold,
            "window_start": s.window_start,
            "window_end": s.window_end,
            "sample_size": s.sample_size,
            "camera_id": k.camera_id,
            "incident_id": self.incident_id,
        }
        if self.kind is TransitionKind.CLOSED:
            return MetricRecovered.model_validate({**common, "reason": self.reason})
        return MetricDegraded.model_validate(
            {
                **common,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "n_positive": s.n_positive,
                "change_point_at": s.change_point_at,
                "evidence": s.evidence,
            }
        )


def incident_id_for(key: SignalKey, opened_by: Signal) -> str:
    """Deterministic from the key and the evaluation that opened it: re-evaluating the same
    stored data yields the same id (the caller's publication is idempotent)."""
    return deterministic_id(
        "incident",
        key.site_id,
        key.model_version or "",
        key.kind.value,
        key.metric,
        key.camera_id or "",
        opened_by.window_end.isoformat(),
    )


def _open(track: IncidentTrack, signal: Signal) -> tuple[IncidentTrack, Transition]:
    incident_id = incident_id_for(track.key, signal)
    opened = track.model_copy(
        update={
            "state": IncidentState.DEGRADED,
            "recent": (),
            "exit_streak": 0,
            "incident_id": incident_id,
            "opened_at": signal.window_end,
            "change_point_at": signal.change_point_at,
            "last_signal": signal,
            "incidents_opened": track.incidents_opened + 1,
        }
    )
    return opened, Transition(TransitionKind.OPENED, track.key, incident_id, signal)


def _close(track: IncidentTrack, signal: Signal, reason: str) -> tuple[IncidentTrack, Transition]:
    assert track.incident_id is not None  # only DEGRADED/RECOVERING close, and both carry one
    closed = IncidentTrack(
        key=track.key, incidents_opened=track.incidents_opened, last_signal=signal
    )
    return closed, Transition(TransitionKind.CLOSED, track.key, track.incident_id, signal, reason)


def step(
    track: IncidentTrack, signal: Signal, policy: IncidentPolicy
) -> tuple[IncidentTrack, Transition | None]:
    """Advance ``track`` by one evaluation; the transition, if any, is what to publish."""
    if signal.key != track.key:
        raise InvalidInputError(f"signal for {signal.key} fed to the track of {track.key}")
    if not signal.enough_data:
        return track, None
    seen = track.model_copy(update={"last_signal": signal})
    if track.state in (IncidentState.OK, IncidentState.PENDING):
        if track.state is IncidentState.OK and not signal.breached:
            return seen, None
        recent = (*track.recent, signal.breached)
        if sum(recent) >= policy.enter_breaches:
            return _open(track, signal)
        if len(recent) >= policy.enter_window:
            return seen.model_copy(update={"state": IncidentState.OK, "recent": ()}), None
        return seen.model_copy(update={"state": IncidentState.PENDING, "recent": recent}), None
    if signal.within_tolerance and not signal.breached:
        streak = track.exit_streak + 1
        if streak >= policy.exit_consecutive:
            return _close(track, signal, "recovered")
        update = {"state": IncidentState.RECOVERING, "exit_streak": streak}
        return seen.model_copy(update=update), None
    update = {"state": IncidentState.DEGRADED, "exit_streak": 0}
    return seen.model_copy(update=update), None


def retire(track: IncidentTrack) -> tuple[IncidentTrack, Transition | None]:
    """The model left this role: an open incident closes with reason ``model_retired``."""
    if track.incident_id is None or track.last_signal is None:
        return track, None
    return _close(track, track.last_signal, "model_retired")
