"""Per-site gateway tokens: ``dlg_<token id>_<secret>``, stored as SHA-256, scoped to a site.

The token id is public (it is logged and used for lookup); the secret is 256 random bits
(``secrets.token_urlsafe(32)``) and never stored or logged. Comparison is constant-time. The
format, hashing and comparison are the services' one scheme, :mod:`defectloop.common.tokens`
(the monitor's viewer tokens are the same with ``dlv_``).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from defectloop.common import tokens
from defectloop.common.errors import (
    DefectloopError,
    ForbiddenError,
    UnauthenticatedError,
    http_status,
)
from defectloop.common.events import utc_now
from defectloop.common.translate import sqlalchemy_errors
from defectloop.ingest.records import GatewayToken

TOKEN_PREFIX = "dlg"


_HINT = "create a token with: defectloop gateway-token --site <site>"
_WHAT = "ingest token store"


class AuthError(DefectloopError):
    """A gateway's authentication or authorization failure; carries no secret."""

    def __init__(self, reason: str, detail: str, token_id: str | None = None) -> None:
        super().__init__(detail, reason=reason, hint=_HINT)
        self.detail = detail
        self.token_id = token_id

    @property
    def status_code(self) -> int:
        return http_status(self)


class TokenRejectedError(AuthError, UnauthenticatedError):
    """No token, or one that is malformed, unknown or revoked: 401."""


class ScopeForbiddenError(AuthError, ForbiddenError):
    """A valid token used for another site or camera: 403."""


@dataclass(frozen=True)
class IssuedToken:
    token_id: str
    token: str
    site_id: str
    camera_id: str | None


@dataclass(frozen=True)
class GatewayIdentity:
    token_id: str
    site_id: str
    camera_id: str | None


hash_token = tokens.hash_token


def new_token() -> tuple[str, str]:
    """A fresh ``(token_id, token)``."""
    return tokens.new_token(TOKEN_PREFIX)


def token_id_of(token: str) -> str | None:
    """The id part of a well-formed token, else ``None``."""
    return tokens.token_id_of(token, TOKEN_PREFIX)


def issue_token(engine: Engine, site_id: str, camera_id: str | None = None) -> IssuedToken:
    """Create and store a token for ``site_id`` (optionally one camera); the only time it is seen."""
    token_id, token = new_token()
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        session.add(
            GatewayToken(
                token_id=token_id,
                site_id=site_id,
                camera_id=camera_id,
                token_sha256=hash_token(token),
            )
        )
        session.commit()
    return IssuedToken(token_id=token_id, token=token, site_id=site_id, camera_id=camera_id)


def revoke_token(engine: Engine, token_id: str) -> bool:
    """Revoke a token by id; ``False`` if there is no such (active) token."""
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        row = session.get(GatewayToken, token_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utc_now()
        session.add(row)
        session.commit()
        return True


def list_tokens(engine: Engine, site_id: str | None = None) -> list[GatewayToken]:
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        query = select(GatewayToken)
        if site_id is not None:
            query = query.where(GatewayToken.site_id == site_id)
        return list(session.exec(query))


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; 401 if absent or malformed."""
    token, problem = tokens.bearer_value(authorization)
    if token is None:
        raise TokenRejectedError("missing_token", problem or "no token")
    return token


def authenticate(engine: Engine, token: str) -> GatewayIdentity:
    """The gateway a token belongs to; 401 when it is unknown, malformed or revoked."""
    token_id = token_id_of(token)
    if token_id is None:
        raise TokenRejectedError("invalid_token", "the token is malformed")
    with sqlalchemy_errors(_WHAT), Session(engine) as session:
        row = session.get(GatewayToken, token_id)
    if not tokens.matches(token, row.token_sha256 if row is not None else None) or row is None:
        raise TokenRejectedError("invalid_token", "unknown token", token_id=token_id)
    if row.revoked_at is not None:
        raise TokenRejectedError("invalid_token", "the token was revoked", token_id=token_id)
    return GatewayIdentity(token_id=row.token_id, site_id=row.site_id, camera_id=row.camera_id)


def authorize(identity: GatewayIdentity, site_id: str, camera_id: str) -> None:
    """403 unless the token is scoped to ``site_id`` (and to ``camera_id`` if camera-bound)."""
    if not hmac.compare_digest(identity.site_id.encode(), site_id.encode()):
        raise ScopeForbiddenError(
            "forbidden_site", "this token may not post to this site", identity.token_id
        )
    if identity.camera_id is not None and identity.camera_id != camera_id:
        raise ScopeForbiddenError(
            "forbidden_camera", "this token may not post for this camera", identity.token_id
        )
