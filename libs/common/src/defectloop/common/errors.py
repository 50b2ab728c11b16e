"""The one error hierarchy of defectloop.

Foreign exceptions (aiokafka, httpx, Pillow, onnxruntime, SQLAlchemy, botocore) are mapped to these
at the boundary where they are caught, by the translators in :mod:`defectloop.common.translate`
(ONNX Runtime's lives in ``defectloop.vision.runtime``, the only place that imports it), so callers
handle defectloop errors only. ``reason`` is a stable, machine-readable code (it goes into DLQ
envelopes, HTTP error bodies and ``image.rejected``); ``hint`` is what a person should try next
(the CLI prints it under the error line). :func:`http_status` is the one error -> HTTP status table
(the app shell answers with it: :mod:`defectloop.common.http_errors`).
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


class BadRequestError(InvalidInputError):
    """The request itself is malformed (unparseable body, missing field) before any meaning."""

    reason = "bad_request"


class PayloadTooLargeError(InvalidInputError):
    """The input is larger than the configured limit."""

    reason = "too_large"


class UnsupportedMediaTypeError(InvalidInputError):
    """The input is not of an accepted media type."""

    reason = "unsupported_media_type"


class UnauthenticatedError(PermanentError):
    """No credential, or one that is unknown, malformed, expired or revoked."""

    reason = "unauthenticated"


class ForbiddenError(PermanentError):
    """A valid credential that may not do this (another site, another camera)."""

    reason = "forbidden"


class ConflictError(PermanentError):
    """The request conflicts with the current state (a duplicate name, a stale version)."""

    reason = "conflict"


class IntegrityMismatchError(PermanentError):
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


_HTTP_STATUS: dict[type[DefectloopError], int] = {
    DefectloopError: 500,
    ConfigError: 500,
    PermanentError: 400,
    InvalidInputError: 422,
    InvalidEventError: 422,
    BadRequestError: 400,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    UnauthenticatedError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    IntegrityMismatchError: 409,
    TransientError: 503,
    ComponentError: 503,
}


def http_status(error: DefectloopError) -> int:
    """The HTTP status for ``error``: its nearest class in the table (the one mapping)."""
    for cls in type(error).__mro__:
        if cls in _HTTP_STATUS:
            return _HTTP_STATUS[cls]
    return 500
