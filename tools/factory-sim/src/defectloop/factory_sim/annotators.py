"""Simulated annotators: Label Studio users who take their site's tasks from Label Studio's own
queue (``GET /api/projects/{id}/next``, what the UI's "Label all tasks" calls) and submit them as
the UI would, from the simulator's ground truth.

Each annotator is a real Label Studio account, signed up through the organisation's invite link
with a password derived from the admin token (so the next run logs in again), and acts with its
own API token: Label Studio's queue then serves an overlap task to two *different* annotators and
never twice to the same one. An annotator whose account predates this (created through
``/api/users/`` without a password, so it cannot log in) falls back to posting on pending tasks
with ``completed_by`` through the admin token.

Skill profiles add realistic noise: box jitter, missed defects, wrong classes, spurious boxes,
slower work, and (careful people) skipping images they cannot read ("could not annotate" with a
reason). Every random draw is seeded from (annotator, image), so a run is reproducible.

The truth of a task's image comes from the camera simulator's :class:`TruthLog`, by ``image_id``
(task data carries it); tasks whose image has no truth are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from defectloop.common.errors import TransientError
from defectloop.common.logging import get_logger
from defectloop.common.retry import call_with_backoff
from defectloop.factory_sim.cameras import Truth, TruthBox, TruthLog
from defectloop.factory_sim.defects import CLASSES

log = get_logger(__name__)

FROM_NAME = "defect"
TO_NAME = "image"
CANNOT_ANNOTATE = "cannot_annotate"
PROJECT_TITLE_PREFIX = "defectloop site "


class _RetryingTransport(httpx.AsyncBaseTransport):
    """Retries a request Label Studio answered 5xx or could not take (a moment of overload).

    Label Studio on SQLite answers 500 "database is locked" when several writers meet (annotators
    signing up while annotation-sync imports tasks); the transaction was rolled back, so sending
    the request again is safe, and a person in the UI would simply retry too.
    """

    def __init__(
        self,
        attempts: int = 6,
        base_delay_s: float = 0.5,
        inner: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._inner = inner or httpx.AsyncHTTPTransport()
        self._attempts = attempts
        self._base_delay_s = base_delay_s

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async def send() -> httpx.Response:
            try:
                response = await self._inner.handle_async_request(request)
            except httpx.TransportError as exc:
                raise TransientError(f"Label Studio unreachable: {exc}") from exc
            if response.status_code >= 500:
                await response.aread()
                await response.aclose()
                raise TransientError(
                    f"Label Studio answered {response.status_code} to {request.method} "
                    f"{request.url.path}"
                )
            return response

        return await call_with_backoff(
            send,
            attempts=self._attempts,
            base_delay_s=self._base_delay_s,
            log_event="label_studio_retrying",
            path=request.url.path,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass(frozen=True)
class SkillProfile:
    name: str
    jitter_px: float = 0.0  # std of each edge's error, pixels
    miss_rate: float = 0.0  # chance to overlook a defect
    wrong_class_rate: float = 0.0  # chance to pick another class
    spurious_rate: float = 0.0  # chance to add a box where there is no defect
    skips_unreadable: bool = True  # skip blurry/obstructed images with a reason
    seconds_per_task: float = 20.0  # mean lead time reported to Label Studio


PROFILES: dict[str, SkillProfile] = {
    "perfect": SkillProfile("perfect", seconds_per_task=10.0),
    "careful": SkillProfile(
        "careful", jitter_px=0.7, miss_rate=0.02, wrong_class_rate=0.02, seconds_per_task=25.0
    ),
    "sloppy": SkillProfile(
        "sloppy",
        jitter_px=3.0,
        miss_rate=0.15,
        wrong_class_rate=0.1,
        spurious_rate=0.05,
        skips_unreadable=False,
        seconds_per_task=45.0,
    ),
}


@dataclass
class SimAnnotator:
    name: str  # also the local part of the email
    profile: SkillProfile
    site: str
    user_id: int | None = None
    token: str | None = None  # own API token; None = the legacy admin-posting fallback
    done: int = 0
    skipped: int = 0

    @property
    def email(self) -> str:
        return f"{self.name}@annotators.{self.site.lower()}.sim"


def default_team(site: str, n: int = 3) -> list[SimAnnotator]:
    """``n`` annotators of a site, cycling careful, sloppy, careful, ..."""
    kinds = ["careful", "sloppy"]
    return [
        SimAnnotator(f"{site.lower()}-{kinds[i % 2]}-{i + 1}", PROFILES[kinds[i % 2]], site)
        for i in range(n)
    ]


def _rng(*parts: str) -> np.random.Generator:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def _rect(
    box: TruthBox | tuple[str, float, float, float, float], w: int, h: int, rid: str
) -> dict[str, Any]:
    if isinstance(box, TruthBox):
        label, x, y, bw, bh = box.label, float(box.x), float(box.y), float(box.w), float(box.h)
    else:
        label, x, y, bw, bh = box
    return {
        "id": rid,
        "type": "rectanglelabels",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "x": x / w * 100.0,
            "y": y / h * 100.0,
            "width": bw / w * 100.0,
            "height": bh / h * 100.0,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


@dataclass(frozen=True)
class Work:
    """What an annotator posts for one task: a result, or a skip with a reason."""

    result: list[dict[str, Any]]
    skip_reason: str | None
    lead_time_s: float


def annotate(truth: Truth, profile: SkillProfile, annotator: str) -> Work:
    """The annotation ``annotator`` with ``profile`` makes of ``truth`` (deterministic)."""
    rng = _rng(annotator, truth.image_id)
    lead = float(rng.gamma(4.0, profile.seconds_per_task / 4.0))
    reason = truth.unreadable_reason
    if reason is not None and profile.skips_unreadable:
        choice = {
            "id": "skip",
            "type": "choices",
            "from_name": CANNOT_ANNOTATE,
            "to_name": TO_NAME,
            "value": {"choices": [reason]},
        }
        return Work([choice], reason, lead)
    w, h = truth.width, truth.height
    result: list[dict[str, Any]] = []
    for i, b in enumerate(truth.boxes):
        if rng.random() < profile.miss_rate:
            continue
        label = b.label
        if rng.random() < profile.wrong_class_rate:
            label = str(rng.choice([c for c in CLASSES if c != b.label]))
        if profile.jitter_px > 0:
            x0 = b.x + rng.normal(0, profile.jitter_px)
            y0 = b.y + rng.normal(0, profile.jitter_px)
            x1 = b.x + b.w + rng.normal(0, profile.jitter_px)
            y1 = b.y + b.h + rng.normal(0, profile.jitter_px)
            x0, x1 = sorted((min(max(x0, 0.0), w), min(max(x1, 0.0), w)))
            y0, y1 = sorted((min(max(y0, 0.0), h), min(max(y1, 0.0), h)))
            if x1 - x0 < 1 or y1 - y0 < 1:
                continue
            result.append(_rect((label, x0, y0, x1 - x0, y1 - y0), w, h, f"r{i}"))
        else:
            result.append(_rect(TruthBox(label, b.x, b.y, b.w, b.h), w, h, f"r{i}"))
    if rng.random() < profile.spurious_rate:
        bw, bh = float(rng.uniform(8, w / 8)), float(rng.uniform(8, h / 8))
        x, y = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
        result.append(_rect((str(rng.choice(CLASSES)), x, y, bw, bh), w, h, "spurious"))
    return Work(result, None, lead)


class LabelStudioAPI:
    """The Label Studio calls an annotator's browser makes: an admin client, and one per account."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._admin_token = token
        self._timeout_s = timeout_s
        self.http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Token {token}"},
            timeout=timeout_s,
            transport=_RetryingTransport(),
        )
        self._as: dict[str, httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        await self.http.aclose()
        for c in self._as.values():
            await c.aclose()
        self._as.clear()

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self.http.request(method, path, **kw)
        resp.raise_for_status()
        return resp.json() if resp.content else None

    def password(self, annotator: SimAnnotator) -> str:
        """The account's password: stable per instance (derived from its admin token)."""
        key = self._admin_token.encode()
        return hmac.new(key, annotator.email.encode(), hashlib.sha256).hexdigest()[:32]

    async def _login(self, annotator: SimAnnotator, invite: str) -> str | None:
        """Sign up through the invite link (or log in if the account exists); its API token."""
        async with httpx.AsyncClient(
            base_url=self.url, timeout=self._timeout_s, transport=_RetryingTransport()
        ) as browser:
            form = {"email": annotator.email, "password": self.password(annotator)}
            for path, params in (("/user/signup/", {"token": invite}), ("/user/login/", {})):
                (await browser.get(path, params=params)).raise_for_status()  # CSRF cookie
                csrf = browser.cookies.get("csrftoken") or ""
                resp = await browser.post(
                    path,
                    params=params,
                    data={**form, "csrfmiddlewaretoken": csrf},
                    headers={"X-CSRFToken": csrf},
                )
                if resp.status_code == 302:  # a redirect home = signed in
                    break
            else:
                return None
            token = await browser.get("/api/current-user/token")
            token.raise_for_status()
            return str(token.json()["token"])

    async def ensure_users(self, team: Sequence[SimAnnotator]) -> None:
        """Give every annotator a real account and its own token (idempotent)."""
        invite = str((await self._json("GET", "/api/invite"))["token"])
        for a in team:
            if a.token is None:
                a.token = await self._login(a, invite)
                if a.token is None:
                    log.warning(
                        "annotator_cannot_log_in",
                        annotator=a.email,
                        fallback="posts with completed_by through the admin token",
                    )
        users = await self._json("GET", "/api/users/")
        rows = users.get("results", users) if isinstance(users, Mapping) else users
        by_email = {str(u.get("email")): int(u["id"]) for u in rows}
        for a in team:
            a.user_id = by_email.get(a.email)

    def _client(self, annotator: SimAnnotator) -> httpx.AsyncClient:
        if annotator.token is None:
            return self.http
        if annotator.email not in self._as:
            self._as[annotator.email] = httpx.AsyncClient(
                base_url=self.url,
                headers={"Authorization": f"Token {annotator.token}"},
                timeout=self._timeout_s,
                transport=_RetryingTransport(),
            )
        return self._as[annotator.email]

    async def next_task(self, annotator: SimAnnotator, project_id: int) -> dict[str, Any] | None:
        """The task Label Studio's queue serves this annotator next (locked for them), or None."""
        resp = await self._client(annotator).get(f"/api/projects/{project_id}/next")
        if resp.status_code == 404:  # "There are no tasks for <user>"
            return None
        resp.raise_for_status()
        task: dict[str, Any] = resp.json()
        return task

    async def postpone(self, annotator: SimAnnotator, task_id: int) -> None:
        """Put a task aside (the UI's Postpone): the queue serves other tasks first."""
        resp = await self._client(annotator).post(
            f"/api/tasks/{task_id}/drafts", json={"result": [], "was_postponed": True}
        )
        resp.raise_for_status()

    async def project_id(self, site: str) -> int | None:
        body = await self._json("GET", "/api/projects/", params={"page_size": 100})
        rows = body.get("results", body) if isinstance(body, Mapping) else body
        for p in rows:
            if p.get("title") == PROJECT_TITLE_PREFIX + site:
                return int(p["id"])
        return None

    async def tasks(self, project_id: int) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self._json(
                "GET",
                "/api/tasks/",
                params={"project": project_id, "page": page, "page_size": 100, "fields": "all"},
            )
            found.extend(body.get("tasks", []))
            if not body.get("tasks") or len(found) >= int(body.get("total", 0)):
                return found
            page += 1

    async def post(self, task_id: int, annotator: SimAnnotator, work: Work) -> dict[str, Any]:
        """Submit (or skip) as the annotator; the admin fallback names them in ``completed_by``."""
        body: dict[str, Any] = {"lead_time": round(work.lead_time_s, 2), "result": work.result}
        if annotator.token is None:
            body["completed_by"] = annotator.user_id
        if work.skip_reason is not None:
            body["was_cancelled"] = True
        resp = await self._client(annotator).post(f"/api/tasks/{task_id}/annotations/", json=body)
        resp.raise_for_status()
        created: dict[str, Any] = resp.json()
        return created


@dataclass
class AnnotatorTeam:
    """The annotators of one site, working through its project's pending tasks."""

    site: str
    api: LabelStudioAPI
    truth: TruthLog
    members: list[SimAnnotator]
    project: int | None = None
    no_truth: set[int] = field(default_factory=set)

    async def setup(self) -> bool:
        await self.api.ensure_users(self.members)
        self.project = await self.api.project_id(self.site)
        return self.project is not None

    def _pending(
        self, tasks: Sequence[Mapping[str, Any]]
    ) -> list[tuple[int, Truth, list[int], int]]:
        """(task id, truth, members free to take it, annotations still needed) per task."""
        out: list[tuple[int, Truth, list[int], int]] = []
        for t in tasks:
            data = t.get("data") or {}
            wanted = int(data.get("annotators_wanted", 1))
            anns = t.get("annotations") or []
            if len(anns) >= wanted or int(t["id"]) in self.no_truth:
                continue
            truth = self.truth.get(str(data.get("image_id", "")))
            if truth is None:
                self.no_truth.add(int(t["id"]))
                continue
            done = {a.get("completed_by") for a in anns}
            done = {d.get("id") if isinstance(d, Mapping) else d for d in done}
            free = [
                i for i, a in enumerate(self.members) if a.token is None and a.user_id not in done
            ]
            if free:
                out.append((int(t["id"]), truth, free, wanted - len(anns)))
        return out

    def _work(self, a: SimAnnotator, task_id: int, truth: Truth) -> Work:
        work = annotate(truth, a.profile, a.name)
        if work.skip_reason:
            a.skipped += 1
        else:
            a.done += 1
        return work

    async def _from_queue(self, a: SimAnnotator, stuck: set[int]) -> bool:
        """One task from Label Studio's queue for ``a``; False when it has nothing to give."""
        assert self.project is not None
        task = await self.api.next_task(a, self.project)
        if task is None:
            return False
        task_id = int(task["id"])
        truth = self.truth.get(str((task.get("data") or {}).get("image_id", "")))
        if truth is None:  # not a simulated image: put it aside, once per step
            if task_id in stuck:
                return False
            stuck.add(task_id)
            self.no_truth.add(task_id)
            await self.api.postpone(a, task_id)
            return True
        await self.api.post(task_id, a, self._work(a, task_id, truth))
        return True

    async def step(self, limit: int | None = None) -> int:
        """Annotate up to ``limit`` tasks, members taking turns at Label Studio's queue."""
        if self.project is None and not await self.setup():
            return 0
        assert self.project is not None
        done = 0
        queued = [a for a in self.members if a.token is not None]
        stuck: set[int] = set()
        while queued and (limit is None or done < limit):
            for a in list(queued):
                if limit is not None and done >= limit:
                    break
                before = a.done + a.skipped
                if not await self._from_queue(a, stuck):
                    queued.remove(a)
                done += a.done + a.skipped - before
        if limit is None or done < limit:
            done += await self._legacy_step(None if limit is None else limit - done)
        return done

    async def _legacy_step(self, limit: int | None) -> int:
        """Members without a login post on pending tasks with ``completed_by`` (admin token)."""
        assert self.project is not None
        if all(a.token is not None for a in self.members):
            return 0
        done = 0
        for task_id, truth, free, need in self._pending(await self.api.tasks(self.project)):
            order = sorted(free, key=lambda i: _rng(truth.image_id, str(i)).random())
            for i in order[:need]:
                a = self.members[i]
                await self.api.post(task_id, a, self._work(a, task_id, truth))
                done += 1
                if limit is not None and done >= limit:
                    return done
        return done

    async def run(self, *, rate: float, stop: asyncio.Event) -> None:
        """Work at about ``rate`` annotations per second until ``stop`` is set."""
        while not stop.is_set():
            n = await self.step(limit=max(1, round(rate)))
            delay = max(n, 1) / rate
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)  # pacing, not sync
