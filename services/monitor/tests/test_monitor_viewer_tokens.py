"""Site-scoped viewer tokens on the monitor's API: a viewer of site A sees only site A.

Real store (SQLite), real tokens minted through the module the CLI uses, the app's error
handlers: every refusal is the shared JSON body {error, detail, hint}.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from defectloop.common.db import make_engine
from defectloop.common.http_errors import install_error_handlers
from defectloop.monitor import api, viewers
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore

from .conftest import EventFactory

pytestmark = pytest.mark.unit

SITE_ROUTES = [
    "",
    "/performance",
    "/series",
    "/drift",
    "/incidents",
    "/scorecards",
    "/agreement",
    "/evaluation",
    "/models",
    "/annotations",
]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'monitor.db'}"


@pytest.fixture
def engine(db_url: str) -> Engine:
    return make_engine(db_url)


@pytest.fixture
def sites(engine: Engine) -> tuple[str, str]:
    """Two sites the monitor has data for."""
    store = MonitorStore(engine)
    a, b = EventFactory("site-a"), EventFactory("site-b")
    for factory in (a, b):
        store.record(factory.deployed("v1"))
        store.record(factory.prediction(0, defective=True))
    return a.site_id, b.site_id


def _client(engine: Engine, *, required: bool) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    settings = MonitorSettings(database_url="sqlite://", viewer_tokens_required=required)
    api.install(app, MonitorStore(engine), settings)
    return TestClient(app)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _shared_error(resp: object, status: int, error: str) -> None:
    from httpx import Response

    assert isinstance(resp, Response)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "detail", "hint"}
    assert body["error"] == error
    assert body["detail"]
    assert body["hint"]


@pytest.mark.parametrize("required", [False, True])
def test_a_site_a_token_sees_only_site_a(
    engine: Engine, db_url: str, sites: tuple[str, str], required: bool
) -> None:
    a, b = sites
    token = viewers.issue([a], database_url=db_url).token
    client = _client(engine, required=required)

    listed = client.get("/v1/sites", headers=_bearer(token))
    assert listed.status_code == 200
    assert [s["site_id"] for s in listed.json()["sites"]] == [a]
    for route in SITE_ROUTES:
        assert client.get(f"/v1/sites/{a}{route}", headers=_bearer(token)).status_code == 200
        _shared_error(
            client.get(f"/v1/sites/{b}{route}", headers=_bearer(token)), 403, "forbidden_site"
        )
    # A site the monitor does not know is refused the same way: the token learns nothing of it.
    _shared_error(client.get("/v1/sites/nosuch", headers=_bearer(token)), 403, "forbidden_site")


def test_an_all_sites_token_sees_every_site(
    engine: Engine, db_url: str, sites: tuple[str, str]
) -> None:
    issued = viewers.issue(None, database_url=db_url)
    assert issued.token.startswith("dlv_")
    assert issued.sites is None
    client = _client(engine, required=True)

    listed = client.get("/v1/sites", headers=_bearer(issued.token)).json()["sites"]
    assert sorted(s["site_id"] for s in listed) == sorted(sites)
    for site in sites:
        assert client.get(f"/v1/sites/{site}", headers=_bearer(issued.token)).status_code == 200
    # Scope does not hide a real 404 from a viewer of every site.
    assert client.get("/v1/sites/nosuch", headers=_bearer(issued.token)).status_code == 404


def test_a_token_of_two_sites_sees_both(
    engine: Engine, db_url: str, sites: tuple[str, str]
) -> None:
    token = viewers.issue(list(sites), database_url=db_url).token
    client = _client(engine, required=True)
    listed = client.get("/v1/sites", headers=_bearer(token)).json()["sites"]
    assert sorted(s["site_id"] for s in listed) == sorted(sites)


def test_a_missing_token_is_a_401_where_tokens_are_required(
    engine: Engine, sites: tuple[str, str]
) -> None:
    client = _client(engine, required=True)
    for path in ("/v1/sites", f"/v1/sites/{sites[0]}/series"):
        resp = client.get(path)
        _shared_error(resp, 401, "missing_token")
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    _shared_error(
        client.get("/v1/sites", headers={"Authorization": "Basic x"}), 401, "missing_token"
    )


def test_without_required_tokens_no_token_sees_every_site(
    engine: Engine, sites: tuple[str, str]
) -> None:
    client = _client(engine, required=False)
    listed = client.get("/v1/sites").json()["sites"]
    assert sorted(s["site_id"] for s in listed) == sorted(sites)


@pytest.mark.parametrize("required", [False, True])
def test_invalid_and_revoked_tokens_are_a_401_even_where_tokens_are_optional(
    engine: Engine, db_url: str, sites: tuple[str, str], required: bool
) -> None:
    client = _client(engine, required=required)
    issued = viewers.issue([sites[0]], database_url=db_url)
    wrong_secret = issued.token[: -len("x")] + ("x" if not issued.token.endswith("x") else "y")
    for bad in ("nonsense", "dlg_0123456789ab_secret", wrong_secret):
        _shared_error(client.get("/v1/sites", headers=_bearer(bad)), 401, "invalid_token")

    viewers.revoke(issued.token_id, database_url=db_url)
    _shared_error(client.get("/v1/sites", headers=_bearer(issued.token)), 401, "invalid_token")
    (info,) = viewers.list_tokens(database_url=db_url)
    assert info.revoked_at is not None
    assert info.sites == (sites[0],)


def test_minting_refuses_bad_input(db_url: str) -> None:
    from defectloop.common.errors import InvalidInputError, NotFoundError

    with pytest.raises(InvalidInputError, match="invalid site id"):
        viewers.issue(["bad id"], database_url=db_url)
    with pytest.raises(InvalidInputError, match="at least one site"):
        viewers.issue([], database_url=db_url)
    with pytest.raises(NotFoundError):
        viewers.revoke("0123456789ab", database_url=db_url)


def test_the_dashboard_page_itself_needs_no_token(engine: Engine) -> None:
    # The page and its scripts hold no data; the token (in the URL fragment) goes with each /v1
    # request the page makes.
    client = _client(engine, required=True)
    assert client.get("/dashboard").status_code == 200
    assert client.get("/dashboard/static/dashboard.js").status_code == 200
