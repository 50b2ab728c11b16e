"""Site-scoped, expiring, HMAC-signed image links (what Label Studio's browser loads).

``sig = HMAC-SHA256(secret, "image|<site>|<image_id>|<exp>")``: a link for site A's image cannot be
replayed for another site or image, and stops working at ``exp`` (Unix seconds).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote, urlencode


def _message(site: str, image_id: str, exp: int) -> bytes:
    return f"image|{site}|{image_id}|{exp}".encode()


def sign(secret: str, site: str, image_id: str, exp: int) -> str:
    return hmac.new(secret.encode(), _message(site, image_id, exp), hashlib.sha256).hexdigest()


def verify(secret: str, site: str, image_id: str, exp: int, sig: str, *, now: float) -> str | None:
    """None when the link is valid, else the reason (``expired`` or ``bad_signature``)."""
    if not hmac.compare_digest(sign(secret, site, image_id, exp), sig):
        return "bad_signature"
    if now >= exp:
        return "expired"
    return None


def image_url(base_url: str, secret: str, site: str, image_id: str, exp: int) -> str:
    query = urlencode({"site": site, "exp": exp, "sig": sign(secret, site, image_id, exp)})
    return f"{base_url.rstrip('/')}/v1/images/{quote(image_id, safe='')}?{query}"


def webhook_secret(secret: str) -> str:
    """The value Label Studio sends in ``X-Webhook-Secret`` (derived, so the key never leaves)."""
    return hmac.new(secret.encode(), b"labelstudio-webhook", hashlib.sha256).hexdigest()
