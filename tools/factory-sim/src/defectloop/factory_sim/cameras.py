"""Simulated camera gateways: render frames of a site and POST them to ingest as a gateway would.

Each posted frame's ground truth goes to a :class:`TruthLog` (JSON lines, keyed by the ``image_id``
ingest will give it: ``image_id_for(site, camera, sha256)``), so simulated annotators can annotate
it later from the truth, without re-rendering.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from defectloop.common.errors import ConfigError, InvalidInputError, TransientError
from defectloop.common.events import image_id_for, sha256_hex
from defectloop.common.logging import get_logger
from defectloop.factory_sim.dataset import encode_png
from defectloop.factory_sim.drift import Drift
from defectloop.factory_sim.render import render
from defectloop.factory_sim.sites import SiteProfile, get_site

log = get_logger(__name__)

DEFAULT_INGEST_URL = "http://127.0.0.1:8081"
BLURRY_SEVERITY = 0.3  # blur drift from which careful annotators give up ("could not annotate")


@dataclass(frozen=True)
class TruthBox:
    label: str
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Truth:
    """What the simulator knows about one posted frame."""

    image_id: str
    site: str
    camera: str
    seed: int
    index: int
    width: int
    height: int
    boxes: tuple[TruthBox, ...]
    drifts: dict[str, float] = field(default_factory=dict)

    @property
    def unreadable_reason(self) -> str | None:
        """Why a careful person could not annotate it, if so."""
        if self.drifts.get("obstruction", 0.0) > 0:
            return "obstructed"
        if self.drifts.get("blur", 0.0) >= BLURRY_SEVERITY:
            return "blurry"
        return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Truth:
        return cls(
            image_id=d["image_id"],
            site=d["site"],
            camera=d["camera"],
            seed=int(d["seed"]),
            index=int(d["index"]),
            width=int(d["width"]),
            height=int(d["height"]),
            boxes=tuple(TruthBox(**b) for b in d["boxes"]),
            drifts={k: float(v) for k, v in d.get("drifts", {}).items()},
        )


class TruthLog:
    """Append-only JSON-lines file of :class:`Truth`, readable while it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cache: dict[str, Truth] = {}
        self._offset = 0

    def append(self, truth: Truth) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = (truth.to_json() + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)  # one write per line: O_APPEND keeps lines whole
            finally:
                os.close(fd)
            self._cache[truth.image_id] = truth

    def get(self, image_id: str) -> Truth | None:
        with self._lock:
            if image_id not in self._cache:
                self._load_new()
            return self._cache.get(image_id)

    def _load_new(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        for raw in data[:end].splitlines():
            if raw.strip():
                t = Truth.from_dict(json.loads(raw))
                self._cache[t.image_id] = t
        self._offset += end


def camera_seed(seed: int, camera: str) -> int:
    """Each camera of a site films other parts: its own seed, stable across runs."""
    return seed * 1000 + int(sha256_hex(camera.encode())[:6], 16) % 1000


def frame(
    site: SiteProfile, camera: str, seed: int, index: int, drifts: Sequence[Drift] = ()
) -> tuple[bytes, Truth]:
    """The PNG a camera sends for frame ``index``, and its truth."""
    cseed = camera_seed(seed, camera)
    img = render(site, index, cseed, drifts)
    png = encode_png(img.pixels)
    h, w = img.pixels.shape
    truth = Truth(
        image_id=image_id_for(site.name, camera, sha256_hex(png)),
        site=site.name,
        camera=camera,
        seed=cseed,
        index=index,
        width=w,
        height=h,
        boxes=tuple(TruthBox(b.label, b.x, b.y, b.w, b.h) for b in img.boxes),
        drifts=dict(img.meta.get("drifts", {})),
    )
    return png, truth


def gateway_token(site: str, camera: str) -> str:
    """A gateway token from the ingest service's own token store (local stack only)."""
    try:
        from defectloop.ingest import tokens
    except ImportError as exc:
        raise ConfigError(
            "cannot issue gateway tokens here (defectloop-ingest is not installed)",
            hint="pass tokens explicitly: --token SITE:CAMERA=TOKEN",
        ) from exc
    return tokens.issue(site, camera).token


@dataclass(frozen=True)
class CameraSpec:
    site: str
    camera: str
    token: str
    seed: int = 1
    drifts: tuple[Drift, ...] = ()


@dataclass
class CameraStats:
    posted: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: int = 0


async def post_frame(
    client: httpx.AsyncClient, ingest_url: str, spec: CameraSpec, png: bytes
) -> dict[str, Any]:
    url = f"{ingest_url.rstrip('/')}/v1/sites/{spec.site}/cameras/{spec.camera}/images"
    try:
        resp = await client.post(
            url,
            content=png,
            headers={"Content-Type": "image/png", "Authorization": f"Bearer {spec.token}"},
        )
    except httpx.TransportError as exc:
        raise TransientError(f"ingest unreachable at {ingest_url}: {exc}") from exc
    if resp.status_code >= 500:
        raise TransientError(f"ingest answered {resp.status_code}")
    if resp.status_code >= 400:
        raise InvalidInputError(f"ingest refused the frame: {resp.status_code} {resp.text[:200]}")
    body: dict[str, Any] = resp.json()
    return body


async def run_camera(
    client: httpx.AsyncClient,
    spec: CameraSpec,
    truth: TruthLog,
    *,
    rate: float,
    duration_s: float,
    ingest_url: str = DEFAULT_INGEST_URL,
    start_index: int = 0,
    stats: CameraStats | None = None,
    on_frame: Callable[[CameraSpec, dict[str, Any]], None] | None = None,
) -> CameraStats:
    """Post frames at ``rate`` per second for ``duration_s`` seconds (rendering off the loop)."""
    if rate <= 0:
        raise InvalidInputError("camera rate must be > 0")
    stats = stats or CameraStats()
    site = get_site(spec.site)
    began = time.monotonic()
    index = start_index
    while time.monotonic() - began < duration_s:
        png, t = await asyncio.to_thread(frame, site, spec.camera, spec.seed, index, spec.drifts)
        truth.append(t)
        stats.posted += 1
        try:
            body = await post_frame(client, ingest_url, spec, png)
        except InvalidInputError as exc:
            stats.rejected += 1
            log.warning("frame_refused", site_id=spec.site, camera_id=spec.camera, error=str(exc))
        except TransientError as exc:
            stats.errors += 1
            log.warning(
                "frame_not_posted", site_id=spec.site, camera_id=spec.camera, error=str(exc)
            )
        else:
            stats.accepted += 1
            if on_frame is not None:
                on_frame(spec, body)
        index += 1
        next_at = began + (index - start_index) / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing the camera's rate
    return stats
