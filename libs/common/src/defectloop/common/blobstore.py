"""Content-addressed blob store: bytes are stored under their SHA-256.

``LocalBlobStore`` (a directory; the local default) and ``S3BlobStore`` (MinIO or any S3-compatible
store; needs the ``s3`` extra, boto3) share one interface. Writes are idempotent: putting the same
bytes twice returns the same URI and writes once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from defectloop.common.errors import ConfigError, IntegrityMismatchError, NotFoundError
from defectloop.common.events import sha256_hex
from defectloop.common.translate import s3_errors


class BlobStore(Protocol):
    def put(self, data: bytes, *, suffix: str = "") -> str:
        """Store ``data``; return its URI (stable for the same bytes)."""

    def get(self, uri: str) -> bytes:
        """Bytes at ``uri``, verified against the digest in the URI."""

    def exists(self, uri: str) -> bool: ...

    def uri_for(self, digest: str, *, suffix: str = "") -> str:
        """Where the blob with this digest lives (or would live): a digest alone locates it."""


def _digest_from_name(name: str) -> str:
    return Path(name).name.split(".", 1)[0]


def _verified(uri: str, data: bytes) -> bytes:
    expected = _digest_from_name(uri)
    if sha256_hex(data) != expected:
        raise IntegrityMismatchError(f"blob {uri} does not match its digest", reason="blob_corrupt")
    return data


class LocalBlobStore:
    """Blobs under ``root/ab/cd/<sha256><suffix>``; atomic writes (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str, suffix: str) -> Path:
        return self.root / digest[:2] / digest[2:4] / f"{digest}{suffix}"

    def put(self, data: bytes, *, suffix: str = "") -> str:
        digest = sha256_hex(data)
        path = self._path(digest, suffix)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return path.as_uri()

    def uri_for(self, digest: str, *, suffix: str = "") -> str:
        return self._path(digest, suffix).as_uri()

    def _local_path(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise NotFoundError(f"not a local blob URI: {uri}", reason="missing_blob")
        path = Path(parsed.path).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise NotFoundError(f"blob URI outside the store: {uri}", reason="missing_blob")
        return path

    def get(self, uri: str) -> bytes:
        path = self._local_path(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"blob not found: {uri}", reason="missing_blob") from exc
        return _verified(uri, data)

    def exists(self, uri: str) -> bool:
        try:
            return self._local_path(uri).exists()
        except NotFoundError:
            return False


S3_ENDPOINT_ENV = "DEFECTLOOP_S3_ENDPOINT"


def s3_client(
    endpoint: str | None = None,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    region: str | None = None,
) -> Any:
    """A boto3 S3 client; ``endpoint`` (default ``$DEFECTLOOP_S3_ENDPOINT``) for S3-compatible
    servers (MinIO, S3Proxy), credentials from the arguments or boto3's usual chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError(
            "the S3 blob store needs boto3", hint="install defectloop-common[s3]"
        ) from exc
    endpoint = endpoint or os.environ.get(S3_ENDPOINT_ENV) or None
    # A session of its own: boto3's default session resolves credentials once per process and
    # keeps them, so a later store would sign with whatever AWS_* said at the first one (CI: a
    # test's S3 server after another test's stopped one answered 403).
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        # Path-style URLs: a local endpoint (an IP, a compose host name) has no per-bucket DNS.
        config=Config(
            s3={"addressing_style": "path" if endpoint else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            # boto3 >= 1.36 adds CRC checksums (aws-chunked trailers) to every upload; S3-
            # compatible servers such as S3Proxy refuse them (501 NotImplemented). Integrity is
            # ours anyway: every blob is verified against its sha256 on read.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise NotFoundError(f"not an s3:// URI: {uri}", reason="missing_blob")
    return parsed.netloc, parsed.path.lstrip("/")


class S3BlobStore:
    """Blobs in an S3-compatible bucket under ``prefix/ab/<sha256><suffix>``."""

    def __init__(self, bucket: str, *, prefix: str = "", client: Any = None) -> None:
        self._client = client if client is not None else s3_client()
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    def _key(self, digest: str, suffix: str) -> str:
        name = f"{digest[:2]}/{digest}{suffix}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, data: bytes, *, suffix: str = "") -> str:
        key = self._key(sha256_hex(data), suffix)
        with s3_errors(f"S3 put of s3://{self.bucket}/{key}"):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def uri_for(self, digest: str, *, suffix: str = "") -> str:
        return f"s3://{self.bucket}/{self._key(digest, suffix)}"

    def get(self, uri: str) -> bytes:
        return _verified(uri, self.read_object(uri))

    def read_object(self, uri: str) -> bytes:
        """The bytes of any object ``s3://bucket/key``, unverified: for objects that are not
        content-addressed (a model bundle's files), which the caller verifies itself."""
        bucket, key = split_s3_uri(uri)
        with s3_errors(f"S3 get of {uri}"):
            obj = self._client.get_object(Bucket=bucket, Key=key)
            data: bytes = obj["Body"].read()
        return data

    def put_object(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key`` under the store's prefix (not content-addressed: e.g. a
        bundle's ``model.json``); return its ``s3://`` URI."""
        key = f"{self.prefix}/{key}" if self.prefix else key
        with s3_errors(f"S3 put of s3://{self.bucket}/{key}"):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data)
        return f"s3://{self.bucket}/{key}"

    def exists(self, uri: str) -> bool:
        """Whether the blob is there; an unreachable store raises (it is not an absent blob)."""
        bucket, key = split_s3_uri(uri)
        try:
            with s3_errors(f"S3 head of {uri}"):
                self._client.head_object(Bucket=bucket, Key=key)
        except NotFoundError:
            return False
        return True


def open_blob_store(url: str) -> LocalBlobStore | S3BlobStore:
    """``file:///dir`` or a plain path -> local; ``s3://bucket/prefix`` -> S3."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        return S3BlobStore(parsed.netloc, prefix=parsed.path)
    if parsed.scheme in ("file", ""):
        return LocalBlobStore(Path(parsed.path if parsed.scheme else url))
    raise ConfigError(f"unsupported blob store URL: {url}", hint="use file:///dir or s3://bucket")
