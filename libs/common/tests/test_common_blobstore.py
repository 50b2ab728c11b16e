from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.common.blobstore import LocalBlobStore, open_blob_store
from defectloop.common.errors import ConfigError, IntegrityMismatchError, NotFoundError

pytestmark = pytest.mark.unit


def test_same_bytes_give_the_same_uri_and_one_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    first = store.put(b"png bytes", suffix=".png")
    assert store.put(b"png bytes", suffix=".png") == first
    assert len([p for p in tmp_path.rglob("*.png")]) == 1
    assert store.get(first) == b"png bytes"


def test_corrupted_blob_is_refused(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    uri = store.put(b"original")
    Path(uri.removeprefix("file://")).write_bytes(b"tampered")
    with pytest.raises(IntegrityMismatchError):
        store.get(uri)


def test_missing_blob_is_not_found(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    with pytest.raises(NotFoundError):
        store.get((tmp_path / "ab" / "cd" / ("ab" + "0" * 62)).as_uri())


def test_uri_outside_the_store_is_refused(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "store")
    with pytest.raises(NotFoundError):
        store.get((tmp_path / "elsewhere.png").as_uri())


def test_open_blob_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_blob_store(tmp_path.as_uri()), LocalBlobStore)
    with pytest.raises(ConfigError):
        open_blob_store("ftp://host/dir")
