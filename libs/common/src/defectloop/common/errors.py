"""The one error hierarchy of defectloop.

Foreign exceptions (aiokafka, httpx, Pillow, onnxruntime, SQLAlchemy...) are mapped to these at the
boundary where they are caught, so callers handle defectloop errors only. ``reason`` is a stable,
machine-readable code (it goes into DLQ envelopes, HTTP error bodies and ``image.rejected``);
``hint`` is what a person should try next (the CLI prints it under the error line).
"""

from __future__ import annotations


class DefectloopError(Exception):
    """Root of every error raised on purpose by defectloop code."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.hint = hint


class ConfigError(DefectloopError):
    """Settings or a configuration file are invalid."""

    reason = "config_invalid"


class PermanentError(DefectloopError):
    """Processing this input can never succeed: retrying is pointless (DLQ it, or 4xx)."""

    reason = "permanent_error"


class InvalidEventError(PermanentError):
    """A Kafka message does not match its topic's event schema."""

    reason = "schema_violation"


class InvalidInputError(PermanentError):
    """User or device input (an image, a dataset, an API call) is malformed."""

    reason = "invalid_input"


class NotFoundError(PermanentError):
    """A referenced thing (blob, model version, dataset) does not exist."""

    reason = "not_found"


class IntegrityError(PermanentError):
    """Content does not match its recorded digest (a tampered or corrupted artifact)."""

    reason = "integrity_mismatch"


class TransientError(DefectloopError):
    """A dependency is unavailable for now: retry later, never drop the input."""

    reason = "transient_error"


class BrokerUnavailableError(TransientError):
    """The Kafka broker cannot be reached or did not acknowledge in time."""

    reason = "broker_unavailable"


class ComponentError(DefectloopError):
    """A local component (Kafka, Label Studio, a service process) failed to start or stop."""

    reason = "component_failed"
