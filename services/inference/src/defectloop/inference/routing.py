"""Which model serves which site and role: the table built from the compacted ``model.deployed``.

- :class:`DeploymentFollower` reads ``model.deployed`` from the beginning at boot with a plain
  aiokafka consumer (no group: every inference process needs the whole table), then keeps
  following it. The router is *ready* once the backlog up to the end offsets seen at start has been
  applied and the models it named have finished loading (or were rejected).
- :class:`ModelRouter` keeps the latest ``ModelDeployed`` per (site, role), verifies and loads
  bundles in background threads, and publishes a new immutable table when a load finishes: a batch
  takes one :meth:`ModelRouter.snapshot` and is predicted entirely by it, so a switch happens
  between batches, never inside one. A bundle that fails verification (``integrity_mismatch``) or
  cannot be loaded is refused (``model_rejected``) and the previous model keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import onnxruntime as ort
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import ValidationError

from defectloop.common import topics
from defectloop.common.errors import (
    ConfigError,
    DefectloopError,
    IntegrityMismatchError,
    InvalidInputError,
)
from defectloop.common.events import ModelDeployed, ModelRole, utc_now
from defectloop.common.logging import get_logger
from defectloop.inference.pipeline import ServedModel
from defectloop.vision.manifest import load_verified
from defectloop.vision.runtime import Detector, ProviderChoice, select_providers, session_options

log = get_logger(__name__)

Key = tuple[str, ModelRole]
Loader = Callable[[ModelDeployed], Detector]

_ROLE_ORDER = {ModelRole.CHAMPION: 0, ModelRole.CHALLENGER: 1, ModelRole.SHADOW: 2}


def bundle_dir(artifact_uri: str) -> Path:
    """The local bundle directory of an ``artifact_uri`` (a path or a ``file://`` URI)."""
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(artifact_uri)
    raise InvalidInputError(
        f"unsupported artifact URI {artifact_uri!r}",
        reason="unsupported_artifact_uri",
        hint="deploy bundles as a local directory path or a file:// URI",
    )


def load_deployed(
    event: ModelDeployed,
    *,
    providers: ProviderChoice = "auto",
    intra_op_threads: int | None = None,
    inter_op_threads: int = 1,
) -> Detector:
    """Verify the deployed bundle (event sha256 = manifest sha256 = file sha256) and load it.

    The ONNX session is built from the bytes that were verified, never re-read from disk.
    """
    manifest, model_bytes = load_verified(bundle_dir(event.artifact_uri))
    if manifest.sha256 != event.sha256:
        raise IntegrityMismatchError(
            f"model.deployed says sha256 {event.sha256[:12]}…, the bundle at "
            f"{event.artifact_uri} is {manifest.sha256[:12]}…",
            hint="the bundle was replaced or tampered with after registration",
        )
    try:
        session = ort.InferenceSession(
            model_bytes,
            sess_options=session_options(intra_op_threads, inter_op_threads),
            providers=select_providers(providers),
        )
    except DefectloopError:
        raise
    except Exception as exc:  # onnxruntime raises its own (pybind) exception types
        raise InvalidInputError(
            f"onnxruntime cannot load {event.artifact_uri}: {exc}", reason="bundle_invalid"
        ) from exc
    return Detector(manifest, session)


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

    def __init__(self, loader: Loader, executor: ThreadPoolExecutor) -> None:
        self._loader = loader
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

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _parse_key(key: bytes | None) -> Key | None:
    if not key:
        return None
    site, _, role = key.decode("utf-8", "replace").partition("/")
    try:
        return site, ModelRole(role)
    except ValueError:
        return None


async def _partitions_of(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        if entry.get("topic") == topic and not entry.get("error_code"):
            return sorted(int(p["partition"]) for p in entry.get("partitions", []))
    return []


class DeploymentFollower:
    """Reads ``model.deployed`` from the beginning, then follows it, feeding a router."""

    def __init__(
        self,
        bootstrap: str,
        router: ModelRouter,
        *,
        client_id: str,
        topic: str = topics.MODEL_DEPLOYED,
    ) -> None:
        self._bootstrap = bootstrap
        self._router = router
        self._client_id = client_id
        self._topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.backlog_read = asyncio.Event()
        self.applied = 0

    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            client_id=f"{self._client_id}-deployments",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partitions = await _partitions_of(self._bootstrap, self._topic)
            if not partitions:
                raise ConfigError(
                    f"topic {self._topic} does not exist",
                    hint="create the stack's topics first (defectloop kafka start)",
                )
            tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        log.info("model_backlog_reading", topic=self._topic, end_offsets=sum(end.values()))
        self._task = asyncio.get_running_loop().create_task(self._run(consumer, end))

    async def _caught_up(self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> bool:
        for tp, offset in end.items():
            if await consumer.position(tp) < offset:
                return False
        return True

    async def _become_ready(self) -> None:
        self.backlog_read.set()
        await self._router.wait_idle()
        self._router.ready.set()
        log.info("model_router_ready", deployments=self.applied, **self._router_summary())

    def _router_summary(self) -> dict[str, int]:
        return {"serving": len(self._router.snapshot().models)}

    def _apply(self, record: ConsumerRecord[Any, Any]) -> None:
        if record.value is None:  # a tombstone retires the key
            key = _parse_key(record.key)
            if key is not None:
                self._router.retire(key[0], key[1], reason="tombstone")
            return
        try:
            event = ModelDeployed.model_validate_json(record.value)
        except ValidationError as exc:
            log.error(
                "model_event_invalid",
                partition=record.partition,
                offset=record.offset,
                error=str(exc)[:500],
            )
            return
        self.applied += 1
        self._router.apply(event)

    async def _run(self, consumer: AIOKafkaConsumer, end: dict[TopicPartition, int]) -> None:
        ready_task: asyncio.Task[None] | None = None
        while True:
            try:
                if ready_task is None and await self._caught_up(consumer, end):
                    ready_task = asyncio.get_running_loop().create_task(self._become_ready())
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        self._apply(record)
            except asyncio.CancelledError:
                if ready_task is not None:
                    ready_task.cancel()
                raise
            except Exception as exc:  # keep following: aiokafka reconnects by itself
                log.error("model_follow_failed", error=str(exc)[:500])
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
