"""Site-scoped viewer tokens of the monitor's API and dashboard: ``dlv_<token id>_<secret>``.

The same scheme as ingest's gateway tokens (:mod:`defectloop.common.tokens`: stored as SHA-256,
compared in constant time, ``Authorization: Bearer``); a viewer token's scope is a set of sites,
or every site. A viewer of site A sees only A: ``GET /v1/sites`` lists the sites in scope, and
``/v1/sites/B/...`` answers 403 ``forbidden_site`` (whether or not the monitor knows B, so a token
does not reveal other sites' names).

Without a token the API is open unless ``viewer_tokens_required`` (the monitor binds to 127.0.0.1
by default; set it wherever the monitor is reachable from elsewhere); a token that is presented
is always checked (401 ``invalid_token`` when unknown, malformed or revoked) and always scopes.

This module is also the door the CLI mints tokens through (``defectloop viewer-token``): tools
never open the monitor's tables themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from defectloop.common import authz, tokens
from defectloop.common.db import make_engine
from defectloop.common.errors import (
    ForbiddenError,
    NotFoundError,
    UnauthenticatedError,
)
from defectloop.common.events import utc_now
from defectloop.common.translate import sqlalchemy_errors

TOKEN_PREFIX = "dlv"
ALL_SITES = "*"
_WHAT = "monitor viewer token store"
_HINT = "create one with: defectloop viewer-token --site <site> (or --all-sites)"


class ViewerToken(SQLModel, table=True):
    """A viewer's credential: only the SHA-256 of the token is stored."""

    __tablename__ = "monitor_viewer_token"

    token_id: str = Field(primary_key=True, description="Public id, part of the token.")
    sites_json: str = Field(description='JSON list of site ids, or ["*"] for every site.')
    token_sha256: str
    created_at: datetime = Field(default_factory=utc_now)
    revoked_at: datetime | None = None


class ViewerTokenError(UnauthenticatedError):
    """No token where one is required, or one that is malformed, unknown or revoked: 401."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason=reason, hint=_HINT)


class SiteForbiddenError(ForbiddenError):
    """A valid viewer token used for a site outside its scope: 403."""

    reason = "forbidden_site"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: a token's id and sites (``None``: every site), or anonymous (no token,
    allowed only while tokens are not required)."""

    token_id: str | None
    sites: frozenset[str] | None

    def may_see(self, site_id: str) -> bool:
        return self.sites is None or site_id in self.sites

    def visible(self, site_ids: list[str]) -> list[str]:
        return [s for s in site_ids if self.may_see(s)]


ANONYMOUS = Viewer(token_id=None, sites=None)


@dataclass(frozen=True)
class IssuedViewerToken:
    token_id: str
    token: str
    sites: tuple[str, ...] | None


@dataclass(frozen=True)
class ViewerTokenInfo:
    """What may be shown about a token (never the secret, never its hash)."""

    token_id: str
    sites: tuple[str, ...] | None
    created_at: datetime
    revoked_at: datetime | None


def create_table(engine: Engine) -> None:
    with sqlalchemy_errors(_WHAT):
        SQLModel.metadata.create_all(engine, tables=[ViewerToken.__table__])  # type: ignore[attr-defined]


def _scope(row: ViewerToken) -> tuple[str, ...] | None:
    sites = tuple(json.loads(row.sites_json))
    return None if ALL_SITES in sites else sites


def authenticate(engine: Engine, token: str) -> Viewer:
    """The viewer a token belongs to; 401 when it is malformed, unknown or revoked."""
    token_id = tokens.token_id_of(token, TOKEN_PREFIX)
    if token_id is None:
        raise ViewerTokenError("invalid_token", "the token is malformed (dlv_<id>_<secret>)")
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        row = session.get(ViewerToken, token_id)
    if not tokens.matches(token, row.token_sha256 if row is not None else None) or row is None:
        raise ViewerTokenError("invalid_token", "unknown viewer token")
    if row.revoked_at is not None:
        raise ViewerTokenError("invalid_token", "the viewer token was revoked")
    sites = _scope(row)
    return Viewer(token_id=row.token_id, sites=None if sites is None else frozenset(sites))


_bearer = HTTPBearer(
    auto_error=False,
    description="Viewer token dlv_<token id>_<secret> (defectloop viewer-token): its sites only.",
)


def viewer_dependency(engine: Engine, *, required: bool) -> Callable[..., Viewer]:
    """The FastAPI dependency that says who is looking (401 on a bad token)."""

    def current_viewer(
        request: Request,
        _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Viewer:
        header = request.headers.get("authorization")
        if header is None and not required:
            return ANONYMOUS
        token, problem = tokens.bearer_value(header)
        if token is None:
            raise ViewerTokenError("missing_token", problem or "no token")
        return authenticate(engine, token)

    return current_viewer


def principal_authenticator(engine: Engine) -> Callable[[str], authz.Principal]:
    """Viewer tokens as API-token principals of role viewer (the API's checks are
    :mod:`defectloop.common.authz`'s; a viewer token is the monitor-only form of one)."""

    def principal(token: str) -> authz.Principal:
        viewer = authenticate(engine, token)
        return authz.Principal(
            token_id=viewer.token_id,
            user=f"viewer-token:{viewer.token_id}",
            role=authz.Role.VIEWER,
            sites=viewer.sites,
        )

    return principal


def check_site(viewer: Viewer, site_id: str) -> None:
    """403 unless ``site_id`` is in the viewer's scope."""
    if not viewer.may_see(site_id):
        raise SiteForbiddenError(
            f"this viewer token may not see site {site_id!r}",
            hint="GET /v1/sites lists the sites this token may see",
        )


# -- the door for the CLI: issue, revoke, list (on the monitor's database) --


@contextmanager
def _database(database_url: str | None) -> Iterator[Engine]:
    if database_url is None:
        from defectloop.monitor.settings import MonitorSettings

        database_url = MonitorSettings().resolved_database_url()
    engine = make_engine(database_url, create_tables=False)
    try:
        create_table(engine)
        yield engine
    finally:
        engine.dispose()


def issue(sites: list[str] | None, *, database_url: str | None = None) -> IssuedViewerToken:
    """A new viewer token for ``sites`` (``None``: every site); the only time it is seen."""
    scope = authz.site_scope(sites, what="a viewer token")
    token_id, token = tokens.new_token(TOKEN_PREFIX)
    with _database(database_url) as engine, sqlalchemy_errors(_WHAT), Session(engine) as session:
        session.add(
            ViewerToken(
                token_id=token_id,
                sites_json=json.dumps(scope),
                token_sha256=tokens.hash_token(token),
            )
        )
        session.commit()
    return IssuedViewerToken(
        token_id=token_id, token=token, sites=None if sites is None else tuple(scope)
    )


def revoke(token_id: str, *, database_url: str | None = None) -> None:
    """Revoke a viewer token by id (its next request gets 401); NotFoundError if none active."""
    with _database(database_url) as engine, sqlalchemy_errors(_WHAT), Session(engine) as session:
        row = session.get(ViewerToken, token_id)
        if row is None or row.revoked_at is not None:
            raise NotFoundError(
                f"no active viewer token {token_id}", hint="the id is the part after dlv_"
            )
        row.revoked_at = utc_now()
        session.add(row)
        session.commit()


def list_tokens(*, database_url: str | None = None) -> list[ViewerTokenInfo]:
    """Every viewer token, oldest first."""
    with _database(database_url) as engine, sqlalchemy_errors(_WHAT), Session(engine) as session:
        rows = list(session.exec(select(ViewerToken)))
    infos = [ViewerTokenInfo(r.token_id, _scope(r), r.created_at, r.revoked_at) for r in rows]
    return sorted(infos, key=lambda info: info.created_at)


__all__ = [
    "ANONYMOUS",
    "IssuedViewerToken",
    "SiteForbiddenError",
    "Viewer",
    "ViewerToken",
    "ViewerTokenError",
    "ViewerTokenInfo",
    "authenticate",
    "check_site",
    "issue",
    "list_tokens",
    "principal_authenticator",
    "revoke",
    "viewer_dependency",
]
