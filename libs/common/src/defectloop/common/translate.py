"""One translator per foreign library: context managers that turn its exceptions into ours.

``with kafka_errors("publishing image.captured"): ...`` lets a foreign exception out only as a
:class:`~defectloop.common.errors.DefectloopError` (the original is its ``__cause__``), so callers
and the boundaries (HTTP error body, DLQ, CLI) handle one hierarchy. Each translator imports its
library when it is entered, so a package that never uses S3 need not install botocore.
ONNX Runtime's translator is ``defectloop.vision.runtime.onnxruntime_errors`` (the only place that
imports onnxruntime).

What is transient and what is permanent, per library (an unknown failure of a dependency is
treated as transient: retrying is safe, dropping the input is not):

- Kafka (aiokafka): unreachable / timed out -> ``BrokerUnavailableError``; a record too large ->
  ``InvalidInputError``; authorization and configuration -> ``ConfigError``; any other -> transient.
- S3 (botocore): decided by the error *code* (``NoSuchKey``, ``404``...) never by message text:
  not found -> ``NotFoundError``; access denied, no credentials, no bucket -> ``ConfigError``;
  throttling, 5xx, connection -> ``TransientError``; another 4xx -> ``PermanentError``.
- SQLAlchemy: a constraint violation -> ``ConflictError``; a bad URL or missing driver ->
  ``ConfigError``; operational (locked, gone, timed out) and any other -> ``TransientError``.
- httpx: connect/read failures and timeouts, 429 and 5xx -> ``TransientError``; 404 ->
  ``NotFoundError``; 401/403 -> ``ConfigError`` (our credentials are wrong); another 4xx ->
  ``PermanentError``; an invalid URL -> ``ConfigError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from defectloop.common.errors import (
    BrokerUnavailableError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermanentError,
    TransientError,
)


def _say(what: str, exc: BaseException) -> str:
    return f"{what}: {type(exc).__name__}: {exc}"[:1000]


@contextmanager
def kafka_errors(what: str = "Kafka", *, hint: str | None = None) -> Iterator[None]:
    """Translate aiokafka's exceptions raised inside the block (``hint``: when unreachable)."""
    from aiokafka import errors as ak

    unavailable = (
        ak.KafkaConnectionError,
        ak.KafkaTimeoutError,
        ak.RequestTimedOutError,
        ak.NodeNotReadyError,
        ak.BrokerNotAvailableError,
        ak.KafkaUnavailableError,
    )
    too_large = (ak.MessageSizeTooLargeError, ak.RecordTooLargeError, ak.RecordListTooLargeError)
    misconfigured = (
        ak.TopicAuthorizationFailedError,
        ak.GroupAuthorizationFailedError,
        ak.ClusterAuthorizationFailedError,
        ak.AuthenticationFailedError,
        ak.KafkaConfigurationError,
        ak.UnsupportedVersionError,
    )
    try:
        yield
    except unavailable as exc:
        raise BrokerUnavailableError(
            _say(what, exc), hint=hint or "check that Kafka is running and reachable"
        ) from exc
    except too_large as exc:
        raise InvalidInputError(_say(what, exc), reason="message_too_large") from exc
    except misconfigured as exc:
        raise ConfigError(_say(what, exc), hint="check the Kafka settings and ACLs") from exc
    except ak.KafkaError as exc:
        raise TransientError(_say(what, exc), reason="kafka_error") from exc


_S3_NOT_FOUND = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})
_S3_CONFIG = frozenset(
    {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}
)
_S3_TRANSIENT = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable"}
)


@contextmanager
def s3_errors(what: str = "S3") -> Iterator[None]:
    """Translate botocore's exceptions raised inside the block (by error code, not text)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = _say(what, exc)
        if code in _S3_NOT_FOUND:
            raise NotFoundError(message, reason="missing_blob") from exc
        if code in _S3_CONFIG:
            raise ConfigError(message, hint="check the bucket and the S3 credentials") from exc
        if code in _S3_TRANSIENT or status >= 500 or status == 429:
            raise TransientError(message, reason="s3_unavailable") from exc
        raise PermanentError(message, reason="s3_refused") from exc
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise ConfigError(
            _say(what, exc), hint="set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        ) from exc
    except BotoCoreError as exc:  # endpoint unreachable, connection closed, read timeout
        raise TransientError(_say(what, exc), reason="s3_unavailable") from exc


@contextmanager
def sqlalchemy_errors(what: str = "database") -> Iterator[None]:
    """Translate SQLAlchemy's exceptions raised inside the block."""
    from sqlalchemy import exc as sa

    try:
        yield
    except sa.IntegrityError as exc:
        raise ConflictError(_say(what, exc)) from exc
    except (sa.ArgumentError, sa.NoSuchModuleError) as exc:
        raise ConfigError(
            _say(what, exc), hint="check the database URL (a SQLAlchemy URL with its driver)"
        ) from exc
    except sa.SQLAlchemyError as exc:
        raise TransientError(_say(what, exc), reason="database_unavailable") from exc


@contextmanager
def httpx_errors(what: str = "HTTP") -> Iterator[None]:
    """Translate httpx's exceptions raised inside the block (``raise_for_status`` included)."""
    import httpx

    try:
        yield
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        message = _say(what, exc)
        if status == 429 or status >= 500:
            raise TransientError(message, reason="upstream_unavailable") from exc
        if status == 404:
            raise NotFoundError(message) from exc
        if status in (401, 403):
            raise ConfigError(message, hint="check the credentials (token) configured") from exc
        raise PermanentError(message, reason="upstream_refused") from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise ConfigError(_say(what, exc), hint="check the URL in the settings") from exc
    except httpx.TransportError as exc:  # connect, read, write, pool timeouts; protocol errors
        raise TransientError(_say(what, exc), reason="upstream_unavailable") from exc
    except httpx.HTTPError as exc:  # e.g. decoding the response
        raise TransientError(_say(what, exc), reason="upstream_error") from exc
