"""Each foreign library's translator: what it must catch comes out as one of ours, cause kept.

The tables below are the foreign exceptions each translator must handle; a new one that a library
starts raising belongs here. The real-dependency tests drive the code against a dependency that
fails for real (an unreachable endpoint, a missing driver), not a constructed exception.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import boto3
import httpx
import pytest
from aiokafka import errors as ak
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from botocore.stub import Stubber
from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa

from defectloop.common import errors
from defectloop.common.blobstore import S3BlobStore
from defectloop.common.kafka_admin import partitions_of
from defectloop.common.translate import httpx_errors, kafka_errors, s3_errors, sqlalchemy_errors
from defectloop.testing.net import free_port

pytestmark = pytest.mark.unit

Translator = Callable[[], AbstractContextManager[None]]


def _translated(translator: Translator, foreign: BaseException) -> errors.DefectloopError:
    with pytest.raises(errors.DefectloopError) as caught, translator():
        raise foreign
    assert caught.value.__cause__ is foreign
    return caught.value


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def _status_error(status: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", "http://upstream/x")
    return httpx.HTTPStatusError(
        "failed", request=request, response=httpx.Response(status, request=request)
    )


_REQUEST = httpx.Request("GET", "http://upstream/x")

CASES: list[tuple[Translator, BaseException, type[errors.DefectloopError]]] = [
    (kafka_errors, ak.KafkaConnectionError("refused"), errors.BrokerUnavailableError),
    (kafka_errors, ak.KafkaTimeoutError(), errors.BrokerUnavailableError),
    (kafka_errors, ak.RequestTimedOutError(), errors.BrokerUnavailableError),
    (kafka_errors, ak.NodeNotReadyError(), errors.BrokerUnavailableError),
    (kafka_errors, ak.MessageSizeTooLargeError(), errors.InvalidInputError),
    (kafka_errors, ak.TopicAuthorizationFailedError(), errors.ConfigError),
    (kafka_errors, ak.NotLeaderForPartitionError(), errors.TransientError),
    (kafka_errors, ak.UnknownTopicOrPartitionError(), errors.TransientError),
    (s3_errors, _client_error("NoSuchKey", 404), errors.NotFoundError),
    (s3_errors, _client_error("404", 404), errors.NotFoundError),
    (s3_errors, _client_error("AccessDenied", 403), errors.ConfigError),
    (s3_errors, _client_error("NoSuchBucket", 404), errors.ConfigError),
    (s3_errors, _client_error("SlowDown", 503), errors.TransientError),
    (s3_errors, _client_error("InternalError", 500), errors.TransientError),
    (s3_errors, _client_error("InvalidArgument", 400), errors.PermanentError),
    (s3_errors, EndpointConnectionError(endpoint_url="http://s3"), errors.TransientError),
    (s3_errors, NoCredentialsError(), errors.ConfigError),
    (sqlalchemy_errors, sa.IntegrityError("INSERT", {}, Exception("unique")), errors.ConflictError),
    (
        sqlalchemy_errors,
        sa.OperationalError("SELECT", {}, Exception("locked")),
        errors.TransientError,
    ),
    (sqlalchemy_errors, sa.ArgumentError("bad url"), errors.ConfigError),
    (sqlalchemy_errors, sa.NoSuchModuleError("no driver"), errors.ConfigError),
    (sqlalchemy_errors, sa.TimeoutError("pool"), errors.TransientError),
    (httpx_errors, httpx.ConnectError("refused", request=_REQUEST), errors.TransientError),
    (httpx_errors, httpx.ReadTimeout("slow", request=_REQUEST), errors.TransientError),
    (httpx_errors, httpx.InvalidURL("no scheme"), errors.ConfigError),
    (httpx_errors, httpx.UnsupportedProtocol("ftp"), errors.ConfigError),
    (httpx_errors, _status_error(503), errors.TransientError),
    (httpx_errors, _status_error(429), errors.TransientError),
    (httpx_errors, _status_error(404), errors.NotFoundError),
    (httpx_errors, _status_error(401), errors.ConfigError),
    (httpx_errors, _status_error(400), errors.PermanentError),
]


@pytest.mark.parametrize(
    ("translator", "foreign", "expected"),
    CASES,
    ids=[f"{t.__name__}-{type(f).__name__}" for t, f, _ in CASES],
)
def test_a_foreign_exception_comes_out_as_ours(
    translator: Translator, foreign: BaseException, expected: type[errors.DefectloopError]
) -> None:
    translated = _translated(translator, foreign)
    assert type(translated) is expected
    assert type(foreign).__name__ in str(translated)


@pytest.mark.parametrize("translator", [kafka_errors, s3_errors, sqlalchemy_errors, httpx_errors])
@pytest.mark.parametrize("passing", [ValueError("a bug"), errors.NotFoundError("ours already")])
def test_what_is_not_the_librarys_passes_through_unchanged(
    translator: Translator, passing: Exception
) -> None:
    with pytest.raises(type(passing)) as caught, translator():
        raise passing
    assert caught.value is passing


def test_s3_not_found_is_decided_by_the_error_code_not_the_text() -> None:
    misleading = ClientError(
        {"Error": {"Code": "SlowDown", "Message": "NoSuchKey"}, "ResponseMetadata": {}}, "GetObject"
    )
    assert type(_translated(s3_errors, misleading)) is errors.TransientError


def _s3_client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1),
    )


def test_a_missing_s3_blob_is_not_found() -> None:
    client = _s3_client("http://127.0.0.1:1")
    store = S3BlobStore("bucket", client=client)
    digest = "0" * 64
    with Stubber(client) as stub:  # type: ignore[arg-type]
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404)
        with pytest.raises(errors.NotFoundError):
            store.get(f"s3://bucket/00/{digest}.png")
        assert store.exists(f"s3://bucket/00/{digest}.png") is False


def test_an_unreachable_s3_store_is_transient() -> None:
    store = S3BlobStore("bucket", client=_s3_client("http://127.0.0.1:1"))
    with pytest.raises(errors.TransientError):
        store.put(b"bytes")
    with pytest.raises(errors.TransientError):
        store.exists("s3://bucket/00/" + "0" * 64)


def test_a_database_url_without_its_driver_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError), sqlalchemy_errors("probe"):
        create_engine("nosuchdialect://host/db")


def test_an_unopenable_database_is_transient(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    with pytest.raises(errors.TransientError), sqlalchemy_errors("probe"), engine.connect() as c:
        c.execute(text("SELECT 1"))


def test_an_unreachable_http_server_is_transient() -> None:
    with pytest.raises(errors.TransientError), httpx_errors("probe"), httpx.Client() as client:
        client.get("http://127.0.0.1:1/", timeout=2)


async def test_an_unreachable_kafka_is_broker_unavailable_for_the_admin_client() -> None:
    with pytest.raises(errors.BrokerUnavailableError) as caught:
        await partitions_of(f"127.0.0.1:{free_port()}", ["image.captured"])
    assert caught.value.hint == "is Kafka running? `defectloop kafka status`"
