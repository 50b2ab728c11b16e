"""Drift knobs: changes to a site that switch on from a given image index."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from defectloop.common.errors import InvalidInputError

DRIFT_KINDS: tuple[str, ...] = (
    "lighting",  # darker, with a stronger gradient (a lamp failing or moved)
    "blur",  # defocus
    "camera-shift",  # the camera was bumped: translation, rotation, zoom
    "new-defect",  # defects look different: opposite polarity, other shapes
    "noise",  # more sensor noise (gain raised, failing sensor)
    "obstruction",  # something in front of the lens covers part of the frame
    "new-part",  # the line switched to another part geometry
)
DEFAULT_SEVERITY = 0.5


@dataclass(frozen=True)
class Drift:
    """``kind`` applies to every image with index >= ``start_index``; ``severity`` is in (0, 1]."""

    kind: str
    start_index: int = 0
    severity: float = DEFAULT_SEVERITY

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise InvalidInputError(
                f"unknown drift kind {self.kind!r}", hint=f"drift kinds: {', '.join(DRIFT_KINDS)}"
            )
        if self.start_index < 0:
            raise InvalidInputError(
                f"drift start index must be >= 0, got {self.start_index}",
                hint="the start is the first image index the drift applies to",
            )
        if not 0.0 < self.severity <= 1.0:
            raise InvalidInputError(
                f"drift severity must be in (0, 1], got {self.severity}",
                hint=f"omit it for the default {DEFAULT_SEVERITY}",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain form for JSON metadata."""
        return {"kind": self.kind, "start_index": self.start_index, "severity": self.severity}


def parse_drift(spec: str) -> Drift:
    """Parse ``KIND[:START[:SEVERITY]]``, e.g. ``blur:200:0.8``."""
    parts = spec.strip().split(":")
    hint = "write --drift KIND[:START[:SEVERITY]], e.g. --drift blur:200:0.8"
    if len(parts) > 3 or not parts[0]:
        raise InvalidInputError(f"cannot parse drift {spec!r}", hint=hint)
    try:
        start = int(parts[1]) if len(parts) > 1 and parts[1] else 0
        severity = float(parts[2]) if len(parts) > 2 and parts[2] else DEFAULT_SEVERITY
    except ValueError:
        raise InvalidInputError(f"cannot parse drift {spec!r}", hint=hint) from None
    return Drift(parts[0], start, severity)


def active_drifts(drifts: Iterable[Drift], index: int) -> dict[str, Drift]:
    """The drift of each kind in effect at ``index`` (the latest-starting one of a kind wins)."""
    active: dict[str, Drift] = {}
    for drift in drifts:
        if drift.start_index <= index:
            current = active.get(drift.kind)
            if current is None or drift.start_index >= current.start_index:
                active[drift.kind] = drift
    return active
