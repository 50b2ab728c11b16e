"""The isolation matrix (issue 13, Done-when): every route of the monitor, annotation-sync and
trainer apps × every role × own site / other site, on the real apps and their real SQLite tables.

Generated, not listed: the routes come from each app (``app.routes``, method + path), each route's
permission from what it declared (:meth:`defectloop.common.authz.Authz.require` or
:func:`~defectloop.common.authz.public`), so a route added later is in the matrix by itself, and
a route that declares nothing fails the test. Path parameters are filled for the token's own site
and for the other site (a site id, or the id of a job of that site); a route with no site at all
(a list) is asked once and must return nothing of the other site.

Expected: allowed exactly when the role grants the permission AND the token covers the site; an
allowed request may still be 404 (no data) but never 401/403; a refused one is 403
``forbidden_site`` (other site) or ``forbidden_role`` (own site, role lacking). Also: no token,
a malformed, an unknown, a revoked and an expired token are 401 everywhere, and a site nobody
knows is 403 like a real one. The count of cross-site attempts made and refused is printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from defectloop.common import authz
from defectloop.common.db import make_engine
from defectloop.testing.net import free_port

from .conftest import build_service

pytestmark = pytest.mark.integration

OWN, OTHER = "site-a", "site-b"
SITES = (OWN, OTHER)

INFRASTRUCTURE = {
    "/health",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
"""The app shell's routes (no site data) and the dashboard's page and static files (the page holds
no data: it reads the API with the token)."""
DASHBOARD = {"/dashboard", "/dashboard/static"}

BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PUT", "/v1/sites/{site}/campaigns"): {"target": 5, "name": "matrix"},
}
"""A valid body for each route that takes one (a route with a body missing here fails)."""

SITE_PARAMS = {"site_id", "site"}
OBJECT_PARAMS = {"job_id"}
"""Path parameters naming an object of a site: filled with that site's object."""


@dataclass(frozen=True)
class Service:
    name: str
    client: TestClient
    engine: Engine
    objects: dict[str, dict[str, str]]  # param -> site -> an object id of that site


@dataclass(frozen=True)
class Case:
    service: str
    method: str
    path: str
    declared: authz.Requirement


def _job(site: str) -> Any:
    from defectloop.trainer.jobs import Job

    now = datetime.now(UTC)
    return Job(
        job_id=f"job-{site}",
        site_id=site,
        state="waiting_labels",
        kind="performance",
        change_point_at=now,
        deadline_at=now + timedelta(days=1),
    )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Service]]:
    root: Path = tmp_path_factory.mktemp("matrix")
    dead_broker = f"127.0.0.1:{free_port()}"  # the apps are not started: no lifespan, no Kafka
    required: dict[str, dict[str, Any]] = {
        "monitor": {"viewer_tokens_required": True},
        "annotation_sync": {"tokens_required": True},
        "trainer": {"tokens_required": True, "work_dir": str(root / "trainer-work")},
    }
    built: dict[str, Service] = {}
    engines: list[Engine] = []
    for name, extra in required.items():
        url = f"sqlite:///{root / name}.db"
        app: FastAPI = build_service(
            name,
            database_url=url,
            kafka_bootstrap=dead_broker,
            blob_url=f"file://{root}/blobs",
            **extra,
        )
        engine = make_engine(url, create_tables=False)
        engines.append(engine)
        objects: dict[str, dict[str, str]] = {}
        if name == "monitor":  # both sites known to the monitor: reads of A answer 200
            from defectloop.monitor.store import MonitorStore
            from defectloop.testing.events import prediction

            monitor = MonitorStore(engine)
            for site in SITES:
                monitor.record(prediction(site, f"img-{site}", defective=True))
        if name == "trainer":
            with Session(engine) as session:
                for site in SITES:
                    session.add(_job(site))
                session.commit()
            objects["job_id"] = {site: f"job-{site}" for site in SITES}
        built[name] = Service(name, TestClient(app), engine, objects)
    yield built
    for engine in engines:
        engine.dispose()


def _declared(route: Any) -> authz.Requirement | authz.Public | None:
    found: list[authz.Requirement | authz.Public] = []
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        if dependant.call is not None and (decl := authz.declared(dependant.call)) is not None:
            found.append(decl)
        stack.extend(dependant.dependencies)
    assert len(found) <= 1 or len({type(f) for f in found}) == 1, (route.path, found)
    return found[0] if found else None


def _routes(app: FastAPI) -> Iterator[tuple[str, str, Any]]:
    for route in iter_route_contexts(app.router.routes):
        path = getattr(route, "path", None)
        methods = getattr(route, "methods", None) or {"GET"}
        if path is None or path in INFRASTRUCTURE or path in DASHBOARD:
            continue
        for method in sorted(methods - {"HEAD"}):
            yield method, path, route


def _cases(services: dict[str, Service]) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    undeclared: list[str] = []
    for name, service in services.items():
        app = service.client.app
        assert isinstance(app, FastAPI)
        for method, path, route in _routes(app):
            decl = _declared(route)
            if decl is None:
                undeclared.append(f"{name} {method} {path}")
            elif isinstance(decl, authz.Requirement):
                cases.append(Case(name, method, path, decl))
    return cases, undeclared


def _site_param(path: str) -> str | None:
    params = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
    found = params & (SITE_PARAMS | OBJECT_PARAMS)
    assert len(found) <= 1, path
    return next(iter(found), None)


def _url(service: Service, case: Case, site: str | None) -> str:
    path = case.path
    param = _site_param(path)
    if param is not None:
        assert site is not None
        value = site if param in SITE_PARAMS else service.objects[param][site]
        path = path.replace("{" + param + "}", value)
    assert "{" not in path, f"fill the path parameters of {case.path} in this test"
    if case.declared.site_query is not None and site is not None:
        path += f"?{case.declared.site_query}={site}"
    return path


def _call(service: Service, case: Case, url: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = BODIES.get((case.method, case.path))
    return service.client.request(case.method, url, headers=headers, json=body)


def _sites_in(body: Any) -> set[str]:
    """Every site id a response mentions (keys site_id / site, anywhere in it)."""
    found: set[str] = set()
    if isinstance(body, dict):
        for key, value in body.items():
            if key in ("site_id", "site") and isinstance(value, str):
                found.add(value)
            found |= _sites_in(value)
    elif isinstance(body, list):
        for item in body:
            found |= _sites_in(item)
    return found


def test_every_route_declares_its_permission(services: dict[str, Service]) -> None:
    cases, undeclared = _cases(services)
    assert not undeclared, (
        f"routes with no declared permission (authz.require/public): {undeclared}"
    )
    for case in cases:
        # Every body-taking route has a body here; every site-scoped route names its site.
        route_has_body = case.method in ("POST", "PUT", "PATCH")
        assert not route_has_body or (case.method, case.path) in BODIES, case
    assert {c.service for c in cases} == set(services)


def test_the_isolation_matrix(
    services: dict[str, Service], capsys: pytest.CaptureFixture[str]
) -> None:
    cases, _ = _cases(services)
    tokens = {
        (name, role): authz.issue(s.engine, role.value, [OWN], f"user-{role.value}").token
        for name, s in services.items()
        for role in authz.Role
    }
    cross_site = cross_site_refused = role_refused = allowed = answered = lists = 0
    failures: list[str] = []
    for case in cases:
        service = services[case.service]
        scoped = _site_param(case.path) is not None or case.declared.site_query is not None
        for role in authz.Role:
            token = tokens[(case.service, role)]
            permitted = case.declared.permission in authz.ROLE_PERMISSIONS[role]
            if _site_param(case.path) is None:  # a list: only the token's sites in it
                lists += 1
                resp = _call(service, case, _url(service, case, None), token)
                if permitted:
                    allowed += 1
                    answered += resp.status_code == 200
                    seen = _sites_in(resp.json()) if resp.status_code == 200 else set()
                    if resp.status_code in (401, 403) or seen - {OWN}:
                        failures.append(f"{case} {role}: {resp.status_code} saw {seen}")
                    cross_site += 1
                    cross_site_refused += OTHER not in seen
                elif resp.status_code != 403:
                    failures.append(f"{case} {role} list: {resp.status_code} (want 403)")
                if not scoped:
                    continue
            for site in SITES:
                resp = _call(service, case, _url(service, case, site), token)
                error = resp.json().get("error") if resp.status_code in (401, 403) else None
                if site == OTHER:
                    cross_site += 1
                    if resp.status_code == 403 and error == "forbidden_site":
                        cross_site_refused += 1
                    else:
                        failures.append(f"{case} {role} other site: {resp.status_code} {error}")
                elif permitted:
                    allowed += 1
                    answered += resp.status_code == 200
                    if resp.status_code in (401, 403):
                        failures.append(f"{case} {role} own site refused: {resp.text}")
                elif resp.status_code == 403 and error == "forbidden_role":
                    role_refused += 1
                else:
                    failures.append(f"{case} {role} own site, role lacks: {resp.status_code}")
    assert not failures, "\n".join(failures)
    assert cross_site == cross_site_refused
    assert cross_site > 0
    assert role_refused > 0  # annotation_write is a permission not every role has
    with capsys.disabled():
        print(
            f"\nisolation matrix: {len(cases)} routes x {len(authz.Role)} roles; "
            f"{cross_site} cross-site attempts made, {cross_site_refused} refused; "
            f"{allowed} allowed on the own site ({answered} answered 200); {role_refused} refused for the role; "
            f"{lists} list requests"
        )


def test_bad_tokens_are_401_and_unknown_sites_403(services: dict[str, Service]) -> None:
    cases, _ = _cases(services)
    for case in cases:
        service = services[case.service]
        scoped = _site_param(case.path) is not None or case.declared.site_query is not None
        url = _url(service, case, OWN if scoped else None)
        expired = authz.issue(service.engine, "viewer", [OWN], "late", timedelta(minutes=1))
        with Session(service.engine) as session:  # expire it now: no waiting in a test
            row = session.get(authz.ApiToken, expired.token_id)
            assert row is not None
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
            session.add(row)
            session.commit()
        revoked = authz.issue(service.engine, "ops", [OWN], "gone")
        assert authz.revoke(service.engine, revoked.token_id)
        for token, error in [
            (None, "missing_token"),
            ("not-a-token", "invalid_token"),
            ("dla_0123456789ab_" + "x" * 43, "invalid_token"),
            (revoked.token, "invalid_token"),
            (expired.token, "expired_token"),
        ]:
            resp = _call(service, case, url, token)
            assert resp.status_code == 401, (case, token, resp.text)
            body = resp.json()
            assert set(body) == {"error", "detail", "hint"}
            assert body["error"] == error
        if _site_param(case.path) in SITE_PARAMS:
            # A site nobody knows: 403 like a real one (the token learns nothing of it).
            token = authz.issue(service.engine, "ops", [OWN], "probe").token
            nosuch = case.path.replace("{site_id}", "nosuch").replace("{site}", "nosuch")
            resp = _call(service, case, nosuch, token)
            assert resp.status_code == 403, resp.text
            assert json.loads(resp.text)["error"] == "forbidden_site"


def test_an_all_sites_token_reads_both_sites(services: dict[str, Service]) -> None:
    service = services["trainer"]
    token = authz.issue(service.engine, "viewer", None, "auditor").token
    jobs = service.client.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"}).json()
    assert sorted(j["site_id"] for j in jobs) == sorted(SITES)
