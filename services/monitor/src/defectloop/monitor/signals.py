"""What one evaluation of one monitored quantity says, before hysteresis.

Every detector of the monitor (performance, data drift, prediction drift, data quality, the
label-free estimate) turns a window of stored observations into :class:`Signal` values; the
incident state machine (``incidents.py``) alone decides, from a run of signals, when an incident
opens or closes. Keeping the two apart lets each statistic be tested on its own and keeps the
hysteresis rules (M of N to enter, a smaller tolerance to leave) in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from defectloop.common.events import DegradationKind


@dataclass(frozen=True)
class SignalKey:
    """What an incident is about: one metric of one kind for one site's model (and camera)."""

    site_id: str
    model_version: str | None
    kind: DegradationKind
    metric: str
    camera_id: str | None = None


@dataclass(frozen=True)
class Signal:
    """One evaluation of one monitored quantity over one window.

    ``breached``: the entry condition holds in this evaluation (e.g. the Wilson upper bound of
    recall is below ``threshold``). ``within_tolerance``: the exit condition holds (e.g. the lower
    bound is back above the smaller exit tolerance). ``enough_data`` false means the window is
    below the minimum sample: the evaluation neither counts for entry nor for exit.
    """

    key: SignalKey
    value: float
    baseline: float
    threshold: float
    breached: bool
    within_tolerance: bool
    enough_data: bool
    window_start: datetime
    window_end: datetime
    sample_size: int
    n_positive: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    change_point_at: datetime | None = None
    evidence: dict[str, float] = field(default_factory=dict)
