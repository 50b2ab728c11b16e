"""Roles per site for the human-facing HTTP APIs (monitor, annotation-sync, trainer, dashboard).

One scheme, reused: an API token is a :mod:`defectloop.common.tokens` token ``dla_<id>_<secret>``
(SHA-256 stored, constant-time check, ``Authorization: Bearer``) whose row also carries its claims:
the user it was issued to (the actor in audit records), one :class:`Role`, the sites it covers
(or every site) and an optional expiry.

Where tokens live: each service keeps its own ``api_token`` table in its own database (no service
reads another's database, and a service stays usable when another is down). ``defectloop api-token``
mints ONE token and writes the same row (id, hash, claims) into every service's table, so one token
works on all three APIs and ``api-token-revoke`` revokes it everywhere. We chose this over one
issuer that services call (or a shared token database) because it adds no network hop and no shared
database to every request, and revocation stays a row update.

What a role may do is :data:`ROLE_PERMISSIONS`, the one table; each route declares the permission it
needs with :meth:`Authz.require` (a FastAPI dependency that also names where the route's site is),
and routes that are authenticated otherwise (a signed image link, the Label Studio webhook secret)
say so with :func:`public`. The isolation-matrix test walks every route of every app and fails on a
route that declares neither.

Errors: 401 ``missing_token`` / ``invalid_token`` / ``expired_token``; 403 ``forbidden_site`` (a site
the token does not cover, whether or not the service knows it) and ``forbidden_role``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, select

from defectloop.common import tokens
from defectloop.common.errors import (
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    UnauthenticatedError,
)
from defectloop.common.events import ID_MAX_LENGTH, SITE_ID_PATTERN, utc_now
from defectloop.common.translate import sqlalchemy_errors

TOKEN_PREFIX = "dla"
ALL_SITES = "*"
_WHAT = "API token store"
_HINT = "create one with: defectloop api-token --role <role> --site <site> --user <name>"


class Role(StrEnum):
    VIEWER = "viewer"
    ANNOTATION_ADMIN = "annotation_admin"
    APPROVER = "approver"
    OPS = "ops"


class Permission(StrEnum):
    READ = "read"
    """Every GET of the three APIs and the dashboard."""
    ANNOTATION_WRITE = "annotation_write"
    """annotation-sync's writes: campaign targets and configuration, re-sync."""
    APPROVE = "approve"
    """Approve, promote or roll back a model (never one's own: governance refuses the author)."""
    OPERATE = "operate"
    """Operational actions (restart a job); not approval."""


ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.ANNOTATION_ADMIN: frozenset({Permission.READ, Permission.ANNOTATION_WRITE}),
    Role.APPROVER: frozenset({Permission.READ, Permission.APPROVE}),
    Role.OPS: frozenset({Permission.READ, Permission.OPERATE}),
}
"""The one role -> permission table (docs/security.md shows it)."""


class ApiToken(SQLModel, table=True):
    """A human's API credential: only the SHA-256 of the token is stored, with its claims."""

    __tablename__ = "api_token"

    token_id: str = Field(primary_key=True, description="Public id, part of the token.")
    user: str = Field(description="Who it was issued to: the actor of what it does.")
    role: str
    sites_json: str = Field(description='JSON list of site ids, or ["*"] for every site.')
    token_sha256: str
    created_at: datetime = Field(default_factory=utc_now)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class TokenError(UnauthenticatedError):
    """No token where one is required, or one that is malformed, unknown, expired or revoked."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason=reason, hint=_HINT)


class ForbiddenSiteError(ForbiddenError):
    reason = "forbidden_site"


class ForbiddenRoleError(ForbiddenError):
    reason = "forbidden_role"


@dataclass(frozen=True)
class Principal:
    """Who is asking: a token's user, role and sites (``None``: every site), or anonymous (no
    token, allowed only where tokens are not required: it may do everything, as before roles)."""

    token_id: str | None
    user: str | None
    role: Role | None
    sites: frozenset[str] | None

    @property
    def anonymous(self) -> bool:
        return self.token_id is None

    def may(self, permission: Permission) -> bool:
        return self.role is None or permission in ROLE_PERMISSIONS[self.role]

    def covers(self, site_id: str) -> bool:
        return self.sites is None or site_id in self.sites

    def visible(self, site_ids: list[str]) -> list[str]:
        return [s for s in site_ids if self.covers(s)]

    def check_site(self, site_id: str) -> None:
        """403 ``forbidden_site`` unless the token covers ``site_id``."""
        if not self.covers(site_id):
            raise ForbiddenSiteError(
                f"this token may not act on site {site_id!r}",
                hint="ask for a token of that site (defectloop api-token --site ...)",
            )

    def check_permission(self, permission: Permission) -> None:
        """403 ``forbidden_role`` unless the token's role grants ``permission``."""
        if not self.may(permission):
            raise ForbiddenRoleError(
                f"role {self.role} may not {permission} (needs one of: "
                f"{', '.join(r for r, p in ROLE_PERMISSIONS.items() if permission in p)})",
                hint="docs/security.md lists what each role may do",
            )


ANONYMOUS = Principal(token_id=None, user=None, role=None, sites=None)


@dataclass(frozen=True)
class Requirement:
    """What a route declared: the permission it needs, and where its site is (a path or query
    parameter; ``None`` when the handler checks the site of what it loads, or lists)."""

    permission: Permission
    site_param: str | None = None
    site_query: str | None = None


@dataclass(frozen=True)
class Public:
    """A route authenticated by other means than an API token (and why)."""

    why: str


def declared(dependency: Callable[..., object]) -> Requirement | Public | None:
    """What a dependency made by :meth:`Authz.require` or :func:`public` declares."""
    found = getattr(dependency, "__authz__", None)
    return found if isinstance(found, Requirement | Public) else None


def public(why: str) -> Callable[[], None]:
    """A dependency that declares a route open to API tokens' absence (signed link, webhook)."""

    def no_token_needed() -> None:
        return None

    no_token_needed.__authz__ = Public(why)  # type: ignore[attr-defined]
    return no_token_needed


# -- checking a presented token ---------------------------------------------------------------


def _as_utc(value: datetime) -> datetime:
    # SQLite gives back naive datetimes; they were written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _scope(sites_json: str) -> frozenset[str] | None:
    sites = frozenset(json.loads(sites_json))
    return None if ALL_SITES in sites else sites


def create_table(engine: Engine) -> None:
    with sqlalchemy_errors(_WHAT):
        SQLModel.metadata.create_all(engine, tables=[ApiToken.__table__])  # type: ignore[attr-defined]


def authenticate(engine: Engine, token: str, *, now: datetime | None = None) -> Principal:
    """The principal of an API token; 401 when malformed, unknown, revoked or expired."""
    token_id = tokens.token_id_of(token, TOKEN_PREFIX)
    if token_id is None:
        raise TokenError("invalid_token", "the token is malformed (dla_<id>_<secret>)")
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        row = session.get(ApiToken, token_id)
    if not tokens.matches(token, row.token_sha256 if row is not None else None) or row is None:
        raise TokenError("invalid_token", "unknown API token")
    if row.revoked_at is not None:
        raise TokenError("invalid_token", "the API token was revoked")
    if row.expires_at is not None and _as_utc(row.expires_at) <= (now or utc_now()):
        raise TokenError("expired_token", f"the API token expired at {row.expires_at:%Y-%m-%d}")
    return Principal(row.token_id, row.user, Role(row.role), _scope(row.sites_json))


Authenticator = Callable[[str], Principal]

_bearer = HTTPBearer(
    auto_error=False,
    description="API token dla_<id>_<secret> (defectloop api-token): a role on some sites.",
)


class Authz:
    """A service's API-token checks: :attr:`current` says who is asking (resolved once per
    request), :meth:`require` makes the dependency a route declares its permission with.

    ``others`` authenticates other prefixes of the same scheme (the monitor's ``dlv_`` viewer
    tokens are role viewer)."""

    def __init__(
        self,
        engine: Engine,
        *,
        required: bool,
        others: Mapping[str, Authenticator] | None = None,
    ) -> None:
        create_table(engine)
        self.engine = engine
        self.required = required
        self._others = dict(others or {})
        self.current = self._current_dependency()

    def authenticate(self, token: str) -> Principal:
        prefix = token.split("_", 1)[0]
        other = self._others.get(prefix)
        return other(token) if other is not None else authenticate(self.engine, token)

    def _current_dependency(self) -> Callable[..., Principal]:
        def current_principal(
            request: Request,
            _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        ) -> Principal:
            header = request.headers.get("authorization")
            if header is None and not self.required:
                return ANONYMOUS
            token, problem = tokens.bearer_value(header)
            if token is None:
                raise TokenError("missing_token", problem or "no token")
            return self.authenticate(token)

        return current_principal

    def require(
        self,
        permission: Permission,
        *,
        site_param: str | None = None,
        site_query: str | None = None,
    ) -> Callable[..., Principal]:
        """The dependency of a route that needs ``permission``: 401 without a valid token (when
        required), 403 ``forbidden_site`` when the route's site (path ``site_param`` or query
        ``site_query``) is not covered, 403 ``forbidden_role`` when the role lacks the
        permission. Returns the principal (the handler scopes lists and loaded objects with it)."""
        # A default, not Annotated[...]: annotations are strings here and a local does not resolve.
        asker = Security(self.current)

        def check(request: Request, principal: Principal = asker) -> Principal:
            # The site first: a token of A learns nothing about B, not even which role B wants.
            site = None
            if site_param is not None:
                site = request.path_params.get(site_param)
            elif site_query is not None:
                site = request.query_params.get(site_query)
            if site is not None:
                principal.check_site(site)
            principal.check_permission(permission)
            return principal

        check.__authz__ = Requirement(permission, site_param, site_query)  # type: ignore[attr-defined]
        return check


# -- issuing and revoking (the CLI's door; each service's own table) --------------------------


@dataclass(frozen=True)
class IssuedToken:
    token_id: str
    token: str
    user: str
    role: Role
    sites: tuple[str, ...] | None
    expires_at: datetime | None


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token (never the secret, never its hash)."""

    token_id: str
    user: str
    role: str
    sites: tuple[str, ...] | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


_DURATION = re.compile(r"^(\d+)([dhm])$")


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``45m`` as a timedelta (the CLI's ``--expires``)."""
    found = _DURATION.fullmatch(text.strip())
    if found is None or int(found.group(1)) == 0:
        raise InvalidInputError(
            f"invalid duration {text!r}", reason="invalid_duration", hint="use e.g. 30d, 12h or 45m"
        )
    unit = {"d": "days", "h": "hours", "m": "minutes"}[found.group(2)]
    return timedelta(**{unit: int(found.group(1))})


def site_scope(sites: list[str] | None, *, what: str = "a token") -> list[str]:
    """The stored scope of a token for ``sites`` (``None``: every site), validated."""
    if sites is None:
        return [ALL_SITES]
    if not sites:
        raise InvalidInputError(
            f"{what} needs at least one site", hint="pass --site S or --all-sites"
        )
    for site in sites:
        if len(site) > ID_MAX_LENGTH or not re.fullmatch(SITE_ID_PATTERN, site):
            raise InvalidInputError(
                f"invalid site id {site!r}",
                reason="invalid_site",
                hint="use at most 64 letters, digits, - and _",
            )
    return sorted(set(sites))


def new_token(
    role: str, sites: list[str] | None, user: str, expires_in: timedelta | None = None
) -> tuple[IssuedToken, ApiToken]:
    """A fresh token and the row to store (in every service's table); validates the claims."""
    try:
        parsed_role = Role(role)
    except ValueError:
        raise InvalidInputError(
            f"unknown role {role!r}",
            reason="invalid_role",
            hint="one of: " + ", ".join(r.value for r in Role),
        ) from None
    if not user.strip() or len(user) > ID_MAX_LENGTH:
        raise InvalidInputError(
            "a token needs the name of its user (at most 64 characters)",
            reason="invalid_user",
            hint="pass --user NAME",
        )
    scope = site_scope(sites)
    token_id, token = tokens.new_token(TOKEN_PREFIX)
    now = utc_now()
    expires_at = now + expires_in if expires_in is not None else None
    row = ApiToken(
        token_id=token_id,
        user=user.strip(),
        role=parsed_role.value,
        sites_json=json.dumps(scope),
        token_sha256=tokens.hash_token(token),
        created_at=now,
        expires_at=expires_at,
    )
    issued = IssuedToken(
        token_id, token, row.user, parsed_role, None if sites is None else tuple(scope), expires_at
    )
    return issued, row


def store(engine: Engine, row: ApiToken) -> None:
    """Write an issued token's row into one service's table."""
    create_table(engine)
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        session.add(ApiToken.model_validate(row.model_dump()))
        session.commit()


def issue(
    engine: Engine,
    role: str,
    sites: list[str] | None,
    user: str,
    expires_in: timedelta | None = None,
) -> IssuedToken:
    """A new token stored in one service's table (tests; the CLI stores one row everywhere)."""
    issued, row = new_token(role, sites, user, expires_in)
    store(engine, row)
    return issued


def revoke(engine: Engine, token_id: str) -> bool:
    """Revoke a token in one service's table; False when it has no active token of that id."""
    create_table(engine)
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        row = session.get(ApiToken, token_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utc_now()
        session.add(row)
        session.commit()
    return True


def require_revoked(token_id: str, revoked_anywhere: bool) -> None:
    """NotFoundError when no service had an active token ``token_id``."""
    if not revoked_anywhere:
        raise NotFoundError(f"no active API token {token_id}", hint="the id is the part after dla_")


def list_tokens(engine: Engine) -> list[TokenInfo]:
    """Every token of one service's table, oldest first."""
    create_table(engine)
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        rows = list(session.exec(select(ApiToken)))
    infos = [
        TokenInfo(
            r.token_id,
            r.user,
            r.role,
            None if (s := _scope(r.sites_json)) is None else tuple(sorted(s)),
            r.created_at,
            r.expires_at,
            r.revoked_at,
        )
        for r in rows
    ]
    return sorted(infos, key=lambda info: info.created_at)


__all__ = [
    "ANONYMOUS",
    "ROLE_PERMISSIONS",
    "ApiToken",
    "Authz",
    "ForbiddenRoleError",
    "ForbiddenSiteError",
    "IssuedToken",
    "Permission",
    "Principal",
    "Public",
    "Requirement",
    "Role",
    "TokenError",
    "TokenInfo",
    "authenticate",
    "declared",
    "issue",
    "list_tokens",
    "new_token",
    "parse_duration",
    "public",
    "require_revoked",
    "revoke",
    "store",
]
