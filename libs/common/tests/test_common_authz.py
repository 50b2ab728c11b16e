"""API tokens with a role per site (defectloop.common.authz) on a real SQLite table and a real
FastAPI app: the role table, expiry, revocation, the declared requirement, the errors' bodies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from defectloop.common import authz
from defectloop.common.db import make_engine
from defectloop.common.errors import InvalidInputError
from defectloop.common.http_errors import install_error_handlers

pytestmark = pytest.mark.unit


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(f"sqlite:///{tmp_path / 'tokens.db'}", create_tables=False)


def _app(engine: Engine, *, required: bool) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    auth = authz.Authz(engine, required=required)
    approves = Depends(auth.require(authz.Permission.APPROVE, site_param="site"))

    @app.post("/v1/sites/{site}/approve")
    def approve(site: str, who: authz.Principal = approves) -> dict[str, str | None]:
        return {"site": site, "actor": who.user}

    return TestClient(app)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_only_the_approver_approves_and_is_the_actor(engine: Engine) -> None:
    client = _app(engine, required=True)
    for role in authz.Role:
        token = authz.issue(engine, role.value, ["A"], f"u-{role.value}").token
        resp = client.post("/v1/sites/A/approve", headers=_bearer(token))
        if role is authz.Role.APPROVER:
            assert resp.json() == {"site": "A", "actor": "u-approver"}
        else:
            assert resp.status_code == 403
            assert resp.json()["error"] == "forbidden_role"
        # Another site: forbidden_site first, whatever the role (nothing learnt of B).
        other = client.post("/v1/sites/B/approve", headers=_bearer(token))
        assert other.status_code == 403
        assert other.json()["error"] == "forbidden_site"


def test_ops_may_operate_but_not_approve() -> None:
    ops = authz.Principal("t", "o", authz.Role.OPS, frozenset({"A"}))
    assert ops.may(authz.Permission.OPERATE)
    assert not ops.may(authz.Permission.APPROVE)
    assert all(authz.Permission.READ in p for p in authz.ROLE_PERMISSIONS.values())


def test_expired_and_revoked_tokens_are_401(engine: Engine) -> None:
    issued = authz.issue(engine, "viewer", ["A"], "v", timedelta(days=30))
    later = datetime.now(UTC) + timedelta(days=31)
    with pytest.raises(authz.TokenError) as expired:
        authz.authenticate(engine, issued.token, now=later)
    assert expired.value.reason == "expired_token"
    assert authz.authenticate(engine, issued.token).role is authz.Role.VIEWER
    assert authz.revoke(engine, issued.token_id)
    assert not authz.revoke(engine, issued.token_id)
    with pytest.raises(authz.TokenError) as revoked:
        authz.authenticate(engine, issued.token)
    assert revoked.value.reason == "invalid_token"


def test_no_token_is_anonymous_only_where_tokens_are_not_required(engine: Engine) -> None:
    assert _app(engine, required=False).post("/v1/sites/A/approve").json()["actor"] is None
    resp = _app(engine, required=True).post("/v1/sites/A/approve")
    assert resp.status_code == 401
    assert set(resp.json()) == {"error", "detail", "hint"}
    assert resp.json()["error"] == "missing_token"


def test_the_route_declares_its_requirement(engine: Engine) -> None:
    check = authz.Authz(engine, required=True).require(authz.Permission.READ, site_query="site")
    assert authz.declared(check) == authz.Requirement(authz.Permission.READ, None, "site")
    assert authz.declared(authz.public("signed link")) == authz.Public("signed link")
    assert authz.declared(lambda: None) is None


@pytest.mark.parametrize("text", ["", "30", "0d", "3w", "-1d", "1.5h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        authz.parse_duration(text)


def test_durations() -> None:
    assert authz.parse_duration("30d") == timedelta(days=30)
    assert authz.parse_duration("12h") == timedelta(hours=12)
    assert authz.parse_duration("45m") == timedelta(minutes=45)
