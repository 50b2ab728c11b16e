"""The public token door (``defectloop.ingest.tokens``): what tools use instead of ingest's tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.common.errors import InvalidInputError, NotFoundError
from defectloop.ingest import auth, tokens
from defectloop.ingest.records import open_database

pytestmark = pytest.mark.unit


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ingest.db'}"


def test_an_issued_token_authenticates_for_its_site_and_camera(url: str) -> None:
    issued = tokens.issue("A", "cam-1", database_url=url)
    identity = auth.authenticate(open_database(url), issued.token)
    assert (identity.token_id, identity.site_id, identity.camera_id) == (
        issued.token_id,
        "A",
        "cam-1",
    )


def test_a_revoked_token_no_longer_authenticates(url: str) -> None:
    issued = tokens.issue("A", database_url=url)
    tokens.revoke(issued.token_id, database_url=url)
    with pytest.raises(auth.AuthError):
        auth.authenticate(open_database(url), issued.token)


def test_revoking_an_unknown_or_revoked_token_is_not_found(url: str) -> None:
    issued = tokens.issue("A", database_url=url)
    tokens.revoke(issued.token_id, database_url=url)
    with pytest.raises(NotFoundError):
        tokens.revoke(issued.token_id, database_url=url)
    with pytest.raises(NotFoundError):
        tokens.revoke("0123456789ab", database_url=url)


def test_the_list_shows_each_sites_tokens_without_their_secret(url: str) -> None:
    first = tokens.issue("A", database_url=url)
    tokens.issue("B", database_url=url)
    tokens.revoke(first.token_id, database_url=url)
    listed = tokens.list_tokens("A", database_url=url)
    assert [(t.token_id, t.site_id, t.revoked_at is not None) for t in listed] == [
        (first.token_id, "A", True)
    ]
    assert first.token not in repr(listed)


@pytest.mark.parametrize(("site", "camera"), [("../etc", None), ("A", "cam 1"), ("x" * 65, None)])
def test_an_invalid_site_or_camera_id_is_refused(url: str, site: str, camera: str | None) -> None:
    with pytest.raises(InvalidInputError):
        tokens.issue(site, camera, database_url=url)
