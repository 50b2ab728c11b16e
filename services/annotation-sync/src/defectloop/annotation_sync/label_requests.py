"""The monitor's ``labels.requested``: which requests of a site are active, and the raised share.

A request is active until ``expires_at`` or until ``target_labels`` random-stratum images sampled
under it carry a completed label, whichever comes first. While any is active the site's random share
is the highest of its own and the requests' (never lowered), within the site's daily budget.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from defectloop.annotation_sync.sampling import SamplingPolicy
from defectloop.annotation_sync.store import LabelRequest, as_utc
from defectloop.common.events import LabelsRequested


@dataclass(frozen=True)
class RequestState:
    request: LabelRequest
    labels_done: int
    active: bool

    def as_dict(self) -> dict[str, Any]:
        r = self.request
        return {
            "request_id": r.request_id,
            "reason": r.reason,
            "incident_id": r.incident_id,
            "requested_by": r.requested_by,
            "random_share": r.random_share,
            "target_labels": r.target_labels,
            "labels_done": self.labels_done,
            "received_at": as_utc(r.received_at).isoformat(),
            "expires_at": as_utc(r.expires_at).isoformat(),
            "active": self.active,
        }


def from_event(event: LabelsRequested, received_at: datetime) -> LabelRequest:
    return LabelRequest(
        request_id=event.request_id,
        site_id=event.site_id,
        reason=event.reason,
        incident_id=event.incident_id,
        random_share=event.random_share,
        target_labels=event.target_labels,
        expires_at=event.expires_at,
        requested_by=event.requested_by,
        received_at=received_at,
    )


def state(request: LabelRequest, labels_done: int, now: datetime) -> RequestState:
    active = as_utc(request.expires_at) > now and labels_done < request.target_labels
    return RequestState(request, labels_done, active)


def raised_policy(policy: SamplingPolicy, active: list[RequestState]) -> SamplingPolicy:
    """``policy`` with the random share raised to the highest active request's."""
    shares = [s.request.random_share for s in active if s.active]
    if not shares or max(shares) <= policy.random_share:
        return policy
    return replace(policy, random_share=max(shares))
