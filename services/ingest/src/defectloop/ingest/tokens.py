"""The door to ingest's gateway tokens: issue, revoke, list (the CLI and the simulator use it).

Tools never open ingest's tables themselves: this module is the one public way in, so the table
layout stays ingest's own business. Each call opens the ingest database (default: the local
stack's, ``DEFECTLOOP_INGEST_DATABASE_URL`` or ``<state>/ingest.db``) and closes it again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Engine

from defectloop.common.errors import InvalidInputError, NotFoundError
from defectloop.common.events import CAMERA_ID_PATTERN, ID_MAX_LENGTH, SITE_ID_PATTERN
from defectloop.ingest import auth
from defectloop.ingest.records import open_database
from defectloop.ingest.settings import IngestSettings

IssuedToken = auth.IssuedToken


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token (never the secret, never its hash)."""

    token_id: str
    site_id: str
    camera_id: str | None
    created_at: datetime
    revoked_at: datetime | None


@contextmanager
def _database(database_url: str | None) -> Iterator[Engine]:
    engine = open_database(database_url or IngestSettings().resolved_database_url())
    try:
        yield engine
    finally:
        engine.dispose()


def _check_id(value: str, pattern: str, what: str) -> None:
    if len(value) > ID_MAX_LENGTH or not re.fullmatch(pattern, value):
        raise InvalidInputError(
            f"invalid {what} id {value!r}",
            reason=f"invalid_{what}",
            hint="use at most 64 letters, digits, - and _",
        )


def issue(
    site_id: str, camera_id: str | None = None, *, database_url: str | None = None
) -> IssuedToken:
    """A new token for ``site_id`` (optionally one camera); the only time the token is seen."""
    _check_id(site_id, SITE_ID_PATTERN, "site")
    if camera_id is not None:
        _check_id(camera_id, CAMERA_ID_PATTERN, "camera")
    with _database(database_url) as engine:
        return auth.issue_token(engine, site_id, camera_id)


def revoke(token_id: str, *, database_url: str | None = None) -> None:
    """Revoke a token by id: its next upload gets 401. :class:`NotFoundError` if none is active."""
    with _database(database_url) as engine:
        revoked = auth.revoke_token(engine, token_id)
    if not revoked:
        raise NotFoundError(
            f"no active gateway token {token_id}", hint="the id is the part after dlg_"
        )


def list_tokens(site_id: str | None = None, *, database_url: str | None = None) -> list[TokenInfo]:
    """Every token (of ``site_id``), oldest first."""
    with _database(database_url) as engine:
        rows = auth.list_tokens(engine, site_id)
    infos = [
        TokenInfo(r.token_id, r.site_id, r.camera_id, r.created_at, r.revoked_at) for r in rows
    ]
    return sorted(infos, key=lambda info: info.created_at)
