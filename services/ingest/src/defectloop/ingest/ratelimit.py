"""Upload limits per gateway token and per site (OWASP API4: unrestricted resource consumption).

One gateway (a leaked token, a camera stuck in a loop) must not take the ingest capacity of
every other camera, and one site not that of every other site. Each upload is counted against
its token's limit and its site's limit; over either, it is answered 429 ``rate_limited`` with
``Retry-After`` (seconds until the window admits one more) *before* its body is read: a refused
upload is not stored, not published, and not an ``image.rejected`` (nothing was judged about the
image). A refused upload does not count against the limits either, so a client that waits for
``Retry-After`` gets in.

Limits are written in the notation of the ``limits`` library, e.g. ``"200/second"`` or
``"50/second;2000/minute"`` (all must hold), with a moving window: at most N uploads in any
window of the given length. Why the library and not a hand-written token bucket: it parses and
validates the notation, its moving window is exact (no burst of 2N at a window edge), it
reports when the window frees up (the ``Retry-After``), and its storage can move from process
memory to Redis (``rate_limit_storage``) when ingest runs as several replicas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi import HTTPException
from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter

from defectloop.common.errors import ConfigError
from defectloop.common.logging import get_logger

log = get_logger(__name__)


def parse_limits(text: str | None) -> tuple[RateLimitItem, ...]:
    """``"200/second;5000/minute"`` -> the limits; ``None`` or ``""`` -> no limit."""
    if not text:
        return ()
    try:
        return tuple(parse_many(text))
    except ValueError as exc:
        raise ConfigError(
            f"invalid rate limit {text!r}: {exc}",
            hint='write N/second, N/minute or N/hour, several joined by ";" '
            '(e.g. "200/second;5000/minute")',
        ) from exc


@dataclass(frozen=True)
class SiteLimits:
    """What applies at one site: per token of the site, and for the whole site."""

    per_token: tuple[RateLimitItem, ...]
    per_site: tuple[RateLimitItem, ...]


class UploadLimiter:
    """Counts uploads per token and per site; :meth:`admit` raises 429 when one is over."""

    def __init__(
        self,
        *,
        per_token: str | None,
        per_site: str | None,
        sites: Mapping[str, tuple[str | None, str | None]] | None = None,
        storage_uri: str = "memory://",
    ) -> None:
        self._default = SiteLimits(parse_limits(per_token), parse_limits(per_site))
        self._sites = {
            site: SiteLimits(
                parse_limits(token) if token is not None else self._default.per_token,
                parse_limits(whole) if whole is not None else self._default.per_site,
            )
            for site, (token, whole) in (sites or {}).items()
        }
        self._limiter = MovingWindowRateLimiter(storage_from_string(storage_uri))

    def limits_of(self, site: str) -> SiteLimits:
        return self._sites.get(site, self._default)

    def admit(self, token_id: str, site: str) -> None:
        """Count one upload of ``token_id`` at ``site``, or raise 429 (counting nothing)."""
        limits = self.limits_of(site)
        checks = [(item, "site", site) for item in limits.per_site]
        checks += [(item, "token", token_id) for item in limits.per_token]
        for item, scope, key in checks:
            # Tested first, hit only when all pass: a refused upload uses up nothing.
            if not self._limiter.test(item, scope, key):
                self._refuse(item, scope, key, token_id, site)
        for item, scope, key in checks:
            self._limiter.hit(item, scope, key)

    def _refuse(self, item: RateLimitItem, scope: str, key: str, token_id: str, site: str) -> None:
        reset_at = self._limiter.get_window_stats(item, scope, key).reset_time
        retry_after = max(1, math.ceil(reset_at - time.time()))
        whose = f"gateway token {token_id}" if scope == "token" else f"site {site}"
        log.warning(
            "upload_rate_limited",
            scope=scope,
            token_id=token_id,
            site_id=site,
            limit=str(item),
            retry_after_s=retry_after,
        )
        raise HTTPException(
            429,
            detail={
                "error": "rate_limited",
                "detail": f"{whose} is over its upload limit ({item})",
                "hint": f"retry after {retry_after} s; the limits are per token and per site "
                "(DEFECTLOOP_INGEST_RATE_LIMIT_*, docs/ingest.md)",
            },
            headers={"Retry-After": str(retry_after)},
        )
