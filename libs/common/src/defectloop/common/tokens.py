"""The one bearer-token scheme of defectloop's HTTP services: ``<prefix>_<token id>_<secret>``.

Ingest's gateway tokens (``dlg_``), the monitor's viewer tokens (``dlv_``) and the human API
tokens with a role per site (``dla_``, :mod:`defectloop.common.authz`) are all this: the
token id is public (logged, used for lookup), the secret is 256 random bits
(``secrets.token_urlsafe(32)``) that is never stored or logged (only the SHA-256 of the whole
token is), and a presented token is compared in constant time. Each service keeps its own table
of tokens and its own scope (a site and camera for a gateway, sites for a viewer); this module
is the format, the hashing, the comparison and the ``Authorization: Bearer`` header.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_ID_HEX = 12
"""48 bits: unique enough for lookup, not a secret."""


def hash_token(token: str) -> str:
    """What is stored of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> tuple[str, str]:
    """A fresh ``(token_id, token)`` with ``prefix`` (``dlg``, ``dlv``)."""
    token_id = secrets.token_hex(TOKEN_ID_HEX // 2)
    return token_id, f"{prefix}_{token_id}_{secrets.token_urlsafe(32)}"


def token_id_of(token: str, prefix: str) -> str | None:
    """The id part of a well-formed token of ``prefix``, else ``None``."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != prefix or not parts[2]:
        return None
    token_id = parts[1]
    if len(token_id) != TOKEN_ID_HEX or any(c not in "0123456789abcdef" for c in token_id):
        return None
    return token_id


def matches(token: str, stored_sha256: str | None) -> bool:
    """Whether ``token`` is the one stored as ``stored_sha256`` (None: no such token id), in
    constant time either way, so an unknown id and a wrong secret take as long."""
    stored = stored_sha256 if stored_sha256 is not None else hash_token(secrets.token_hex(16))
    return hmac.compare_digest(hash_token(token), stored) and stored_sha256 is not None


def bearer_value(authorization: str | None) -> tuple[str | None, str | None]:
    """``(token, None)`` from an ``Authorization: Bearer <token>`` header, else ``(None, what is
    wrong)`` for the caller's 401."""
    if not authorization:
        return None, "an Authorization: Bearer <token> header is required"
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None, "the Authorization header must be 'Bearer <token>'"
    return value.strip(), None
