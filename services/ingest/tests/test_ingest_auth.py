"""Gateway tokens: format, hashed storage, lookup, revocation, site and camera scope."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from defectloop.ingest import auth
from defectloop.ingest.records import GatewayToken, open_database

pytestmark = pytest.mark.unit


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return open_database(f"sqlite:///{tmp_path / 'ingest.db'}")


def test_token_has_prefix_id_and_256_bit_secret() -> None:
    token_id, token = auth.new_token()
    prefix, tid, secret = token.split("_", 2)
    assert (prefix, tid) == ("dlg", token_id)
    assert len(secret) >= 43  # token_urlsafe(32)
    assert auth.token_id_of(token) == token_id


def test_only_the_hash_is_stored(engine: Engine) -> None:
    issued = auth.issue_token(engine, "A")
    with Session(engine) as session:
        row = session.exec(select(GatewayToken)).one()
    assert row.token_sha256 == auth.hash_token(issued.token)
    assert issued.token not in row.model_dump_json()


def test_issued_token_authenticates_to_its_site(engine: Engine) -> None:
    issued = auth.issue_token(engine, "A", "cam-1")
    identity = auth.authenticate(engine, issued.token)
    assert (identity.site_id, identity.camera_id, identity.token_id) == (
        "A",
        "cam-1",
        issued.token_id,
    )


def test_wrong_secret_with_a_known_id_is_401(engine: Engine) -> None:
    issued = auth.issue_token(engine, "A")
    forged = issued.token[:-4] + ("AAAA" if not issued.token.endswith("AAAA") else "BBBB")
    with pytest.raises(auth.AuthError) as caught:
        auth.authenticate(engine, forged)
    assert (caught.value.status_code, caught.value.reason) == (401, "invalid_token")


@pytest.mark.parametrize("token", ["", "abc", "dlg_xyz_secret", "Bearer", "dlg_0123456789ab_"])
def test_malformed_token_is_401(engine: Engine, token: str) -> None:
    with pytest.raises(auth.AuthError) as caught:
        auth.authenticate(engine, token)
    assert caught.value.status_code == 401


def test_revoked_token_is_401(engine: Engine) -> None:
    issued = auth.issue_token(engine, "A")
    assert auth.revoke_token(engine, issued.token_id)
    with pytest.raises(auth.AuthError) as caught:
        auth.authenticate(engine, issued.token)
    assert caught.value.status_code == 401


def test_token_of_site_a_cannot_post_to_site_b() -> None:
    identity = auth.GatewayIdentity(token_id="t", site_id="A", camera_id=None)
    with pytest.raises(auth.AuthError) as caught:
        auth.authorize(identity, "B", "cam-1")
    assert (caught.value.status_code, caught.value.reason) == (403, "forbidden_site")


def test_camera_scoped_token_cannot_post_for_another_camera() -> None:
    identity = auth.GatewayIdentity(token_id="t", site_id="A", camera_id="cam-1")
    auth.authorize(identity, "A", "cam-1")
    with pytest.raises(auth.AuthError) as caught:
        auth.authorize(identity, "A", "cam-2")
    assert (caught.value.status_code, caught.value.reason) == (403, "forbidden_camera")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer   "])
def test_missing_bearer_header_is_401(header: str | None) -> None:
    with pytest.raises(auth.AuthError) as caught:
        auth.bearer_token(header)
    assert (caught.value.status_code, caught.value.reason) == (401, "missing_token")
