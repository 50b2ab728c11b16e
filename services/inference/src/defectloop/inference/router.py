"""Which model serves which site and role: the table built from ``model.deployed``.

:class:`ModelRouter` keeps the latest ``ModelDeployed`` per (site, role), verifies and loads
bundles in background threads, and publishes a new immutable table when a load finishes: a batch
takes one :meth:`ModelRouter.snapshot` and is predicted entirely by it, so a switch happens
between batches, never inside one. A bundle that fails verification (``integrity_mismatch``) or
cannot be loaded is refused (``model_rejected``) and the previous model keeps serving.

The deployments come from :func:`deployments_follower` (the compacted ``model.deployed`` read to
its end, then followed); the router is *ready* once that backlog was applied and the models it
named have finished loading (or were rejected).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from defectloop.common import topics
from defectloop.common.errors import DefectloopError
from defectloop.common.events import ModelDeployed, ModelRole, utc_now
from defectloop.common.kafka import DeadLetterPublisher
from defectloop.common.kafka_table import CompactedTableFollower
from defectloop.common.logging import get_logger
from defectloop.inference.pipeline import ServedModel
from defectloop.vision.runtime import Detector

log = get_logger(__name__)

Key = tuple[str, ModelRole]
Loader = Callable[[ModelDeployed], Detector]
# Told of each refusal (the deployment, reason, error, version still serving): reports it.
OnRefused = Callable[[ModelDeployed, str, str, str | None], Awaitable[None]]

_ROLE_ORDER = {ModelRole.CHAMPION: 0, ModelRole.CHALLENGER: 1, ModelRole.SHADOW: 2}


@dataclass(frozen=True, slots=True)
class ModelTable:
    """An immutable routing table: what serves each (site, role) at one moment."""

    models: Mapping[Key, ServedModel] = field(default_factory=dict)

    def models_for(self, site_id: str) -> Sequence[ServedModel]:
        """The site's models, champion first (empty when there is no champion)."""
        found = [m for (site, _), m in self.models.items() if site == site_id]
        found.sort(key=lambda m: _ROLE_ORDER[m.role])
        if not found or found[0].role != ModelRole.CHAMPION:
            return ()
        return tuple(found)

    def get(self, site_id: str, role: ModelRole) -> ServedModel | None:
        return self.models.get((site_id, role))


@dataclass(slots=True)
class _KeyState:
    wanted: ModelDeployed | None = None
    loading: str | None = None
    rejected: dict[str, Any] | None = None


class ModelRouter:
    """The latest deployment per (site, role), background loading, and atomic table swaps."""

    def __init__(
        self, loader: Loader, executor: ThreadPoolExecutor, *, on_refused: OnRefused | None = None
    ) -> None:
        self._loader = loader
        self._on_refused = on_refused
        self._reports: set[asyncio.Task[None]] = set()
        self._executor = executor
        self._table = ModelTable()
        self._state: dict[Key, _KeyState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Condition | None = None
        self.ready = asyncio.Event()

    # -- reading ------------------------------------------------------------------------------

    def snapshot(self) -> ModelTable:
        """The current table; it never changes afterwards (new loads publish a new table)."""
        return self._table

    def describe(self) -> dict[str, Any]:
        """What serves what, for ``GET /v1/models``."""
        keys = sorted(set(self._state) | set(self._table.models), key=lambda k: (k[0], k[1]))
        rows = []
        for key in keys:
            serving = self._table.models.get(key)
            state = self._state.get(key, _KeyState())
            rows.append(
                {
                    "site_id": key[0],
                    "role": key[1].value,
                    "serving": serving.describe() if serving else None,
                    "loading": state.loading,
                    "last_rejected": state.rejected,
                }
            )
        return {"ready": self.ready.is_set(), "models": rows}

    # -- waiting (boot, tests) ------------------------------------------------------------------

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def wait_for(self, predicate: Callable[[ModelRouter], bool]) -> None:
        """Return once ``predicate(router)`` holds (checked after every change)."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: predicate(self))

    def serving_version(self, site_id: str, role: ModelRole) -> str | None:
        model = self._table.get(site_id, role)
        return model.version if model else None

    def rejected_version(self, site_id: str, role: ModelRole) -> str | None:
        state = self._state.get((site_id, role))
        return str(state.rejected["model_version"]) if state and state.rejected else None

    @property
    def loading(self) -> bool:
        return bool(self._tasks)

    async def wait_idle(self) -> None:
        """Return when no load is in progress."""
        await self.wait_for(lambda r: not r.loading)

    # -- applying deployments ---------------------------------------------------------------------

    def _publish(self, key: Key, model: ServedModel | None) -> None:
        models = dict(self._table.models)
        if model is None:
            models.pop(key, None)
        else:
            models[key] = model
        self._table = ModelTable(models)  # one reference swap: batches hold the old table

    def retire(self, site_id: str, role: ModelRole, *, reason: str) -> None:
        key = (site_id, role)
        self._state.setdefault(key, _KeyState()).wanted = None
        old = self._table.models.get(key)
        if old is not None:
            self._publish(key, None)
            log.info(
                "model_retired",
                site_id=site_id,
                role=role.value,
                model_version=old.version,
                reason=reason,
            )
        self._spawn(self._notify())

    def apply(self, event: ModelDeployed) -> None:
        """Take a deployment into account (the latest per (site, role) wins)."""
        if not event.active:
            self.retire(event.site_id, event.role, reason="inactive")
            return
        key = (event.site_id, event.role)
        state = self._state.setdefault(key, _KeyState())
        state.wanted = event
        current = self._table.models.get(key)
        if (
            current is not None
            and current.version == event.model_version
            and current.sha256 == event.sha256
            and current.artifact_uri == event.artifact_uri
        ):
            log.debug("model_already_serving", site_id=event.site_id, role=event.role.value)
            return
        self._spawn(self._load(key, event))

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("model_task_failed", error=str(task.exception()))
        if not self._tasks:
            asyncio.get_running_loop().create_task(self._notify())

    def _shared_detector(self, event: ModelDeployed) -> Detector | None:
        """A detector already loaded from the same verified bytes (one session per bundle)."""
        for model in self._table.models.values():
            if model.sha256 == event.sha256 and model.artifact_uri == event.artifact_uri:
                return model.detector
        return None

    async def _load(self, key: Key, event: ModelDeployed) -> None:
        state = self._state[key]
        if state.wanted is not event:
            return  # superseded before it started (e.g. an older value in the backlog)
        state.loading = event.model_version
        await self._notify()
        log.info(
            "model_loading",
            site_id=event.site_id,
            role=event.role.value,
            model_version=event.model_version,
            artifact_uri=event.artifact_uri,
        )
        try:
            shared = self._shared_detector(event)
            if shared is not None:
                detector: Detector = shared
            else:
                loop = asyncio.get_running_loop()
                detector = await loop.run_in_executor(self._executor, self._loader, event)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, DefectloopError) else "load_failed"
            if reason == "not_found":
                reason = "bundle_missing"
            state.loading = None
            state.rejected = {
                "model_version": event.model_version,
                "reason": reason,
                "error": str(exc)[:500],
                "at": utc_now().isoformat(),
            }
            serving = self._table.models.get(key)
            log.error(
                "model_rejected",
                site_id=event.site_id,
                role=event.role.value,
                model_version=event.model_version,
                reason=reason,
                error=str(exc)[:500],
                still_serving=serving.version if serving else None,
            )
            await self._notify()
            if self._on_refused is not None:
                # Its own task: a slow broker must not hold the router's readiness or loads.
                report = self._report_refusal(event, reason, str(exc)[:500], serving)
                task = asyncio.get_running_loop().create_task(report)
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)
            return
        if state.wanted is not event:
            state.loading = None
            log.info(
                "model_load_superseded",
                site_id=event.site_id,
                role=event.role.value,
                model_version=event.model_version,
            )
            await self._notify()
            return
        old = self._table.models.get(key)
        self._publish(
            key,
            ServedModel(
                site_id=event.site_id,
                role=event.role,
                name=event.model_name,
                version=event.model_version,
                sha256=event.sha256,
                artifact_uri=event.artifact_uri,
                detector=detector,
            ),
        )
        state.loading = None
        log.info(
            "model_switched",
            site_id=event.site_id,
            role=event.role.value,
            from_version=old.version if old else None,
            to_version=event.model_version,
            providers=detector.providers,
        )
        await self._notify()

    async def _report_refusal(
        self, event: ModelDeployed, reason: str, error: str, serving: ServedModel | None
    ) -> None:
        assert self._on_refused is not None
        try:
            await self._on_refused(event, reason, error, serving.version if serving else None)
        except Exception as exc:  # reporting must never stop the previous model serving
            log.error(
                "model_refusal_not_reported",
                site_id=event.site_id,
                model_version=event.model_version,
                error=str(exc)[:500],
            )

    async def become_ready(self) -> None:
        """Mark the router ready once the loads in progress (the backlog's) have finished."""
        await self.wait_idle()
        self.ready.set()
        log.info("model_router_ready", serving=len(self._table.models))

    async def aclose(self) -> None:
        for task in [*self._tasks, *self._reports]:
            task.cancel()
        for task in [*self._tasks, *self._reports]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def parse_key(key: bytes | None) -> Key | None:
    """The (site, role) of a ``model.deployed`` key ``site/role``; None if it is not one."""
    if not key:
        return None
    site, _, role = key.decode("utf-8", "replace").partition("/")
    try:
        return site, ModelRole(role)
    except ValueError:
        return None


def deployments_follower(
    bootstrap: str,
    router: ModelRouter,
    *,
    dead_letters: DeadLetterPublisher,
    client_id: str,
) -> CompactedTableFollower[ModelDeployed]:
    """The ``model.deployed`` table feeding ``router``; an invalid deployment is dead-lettered."""

    def retire(key: bytes | None) -> None:  # a tombstone retires the key
        parsed = parse_key(key)
        if parsed is None:
            log.warning("model_tombstone_ignored", key=repr(key), reason="invalid_key")
            return
        router.retire(parsed[0], parsed[1], reason="tombstone")

    return CompactedTableFollower(
        bootstrap,
        topics.MODEL_DEPLOYED,
        on_event=router.apply,
        on_tombstone=retire,
        dead_letters=dead_letters,
        client_id=f"{client_id}-deployments",
    )
