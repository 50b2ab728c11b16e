"""A small async client for Label Studio's REST API (httpx), with retries and backoff.

Only what annotation-sync needs: projects, webhooks, task import with predictions, listing tasks
with their annotations (skips included), users. Transport errors, 5xx and 429 are retried with
exponential backoff, then raised as :class:`TransientError` (the caller keeps its input); other
4xx are :class:`PermanentError`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from defectloop.common.errors import PermanentError, TransientError
from defectloop.common.logging import get_logger

log = get_logger(__name__)

PROJECT_TITLE_PREFIX = "defectloop site "
WEBHOOK_ACTIONS = (
    "ANNOTATION_CREATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_DELETED",
)


class LabelStudioError(PermanentError):
    reason = "labelstudio_rejected"


class LabelStudioUnavailableError(TransientError):
    reason = "labelstudio_unavailable"


class LabelStudioClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        attempts: int = 5,
        backoff_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Token {token}"},
            timeout=timeout_s,
            transport=transport,
        )
        self._attempts = attempts
        self._backoff_s = backoff_s

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, attempts: int | None = None, **kwargs: Any
    ) -> Any:
        attempts = attempts or self._attempts
        for attempt in range(1, attempts + 1):
            try:
                resp = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 400:
                    return resp.json() if resp.content else None
                if resp.status_code != 429 and resp.status_code < 500:
                    raise LabelStudioError(
                        f"Label Studio {method} {path} -> {resp.status_code}: {resp.text[:300]}"
                    )
                error = f"HTTP {resp.status_code}"
            if attempt < attempts:
                delay = self._backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "labelstudio_retry",
                    method=method,
                    path=path,
                    attempt=attempt,
                    retry_in_s=delay,
                    error=error,
                )
                await asyncio.sleep(delay)
        raise LabelStudioUnavailableError(f"Label Studio {method} {path} failed: {error}")

    # --- projects ---------------------------------------------------------------------------

    async def projects(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self.request(
                "GET", "/api/projects/", params={"page": page, "page_size": 100}
            )
            rows = body.get("results", []) if isinstance(body, dict) else body
            found.extend(rows)
            if not isinstance(body, dict) or not body.get("next"):
                return found
            page += 1

    async def ensure_project(self, site: str, label_config: str) -> int:
        """The id of ``site``'s project, created (with its config) when missing."""
        title = PROJECT_TITLE_PREFIX + site
        for p in await self.projects():
            if p.get("title") == title:
                return int(p["id"])
        created = await self.request(
            "POST",
            "/api/projects/",
            json={
                "title": title,
                "description": f"Defect annotation for site {site} (managed by defectloop).",
                "label_config": label_config,
                "show_skip_button": True,
                "enable_empty_annotation": True,
                "show_collab_predictions": True,
                "maximum_annotations": 1,
            },
        )
        log.info("labelstudio_project_created", site_id=site, project_id=created["id"])
        return int(created["id"])

    async def ensure_webhook(self, project_id: int, url: str, secret: str) -> int:
        hooks = await self.request("GET", "/api/webhooks/", params={"project": project_id})
        for h in hooks or []:
            if h.get("url") == url and h.get("project") == project_id:
                return int(h["id"])
        created = await self.request(
            "POST",
            "/api/webhooks/",
            json={
                "project": project_id,
                "url": url,
                "send_payload": True,
                "send_for_all_actions": False,
                "actions": list(WEBHOOK_ACTIONS),
                "headers": {"X-Webhook-Secret": secret},
                "is_active": True,
            },
        )
        return int(created["id"])

    # --- tasks ------------------------------------------------------------------------------

    async def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> list[int]:
        """Import ``tasks`` in one request; their ids, in the order of ``tasks``.

        Label Studio creates the batch in one database transaction (all or none) and
        ``return_task_ids`` lists the ids in the order of the payload (checked against the
        real Label Studio by the batch tests). Tried once: an import whose answer was lost may
        have created the tasks, and only the caller can look them up before sending it again.
        """
        body = await self.request(
            "POST",
            f"/api/projects/{project_id}/import",
            attempts=1,
            params={"return_task_ids": "true"},
            json=tasks,
        )
        return [int(t) for t in body.get("task_ids", [])]

    async def find_tasks(self, project_id: int, field: str, value: str) -> dict[str, int]:
        """``data.defectloop_key`` -> task id of every task whose ``data.<field>`` is ``value``
        (a Data Manager filter, paged): after a crash, what an import did create."""
        query = {
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": f"filter:tasks:data.{field}",
                        "operator": "equal",
                        "type": "String",
                        "value": value,
                    }
                ],
            }
        }
        found: dict[str, int] = {}
        page = 1
        while True:
            body = await self.request(
                "GET",
                "/api/tasks/",
                params={
                    "project": project_id,
                    "page": page,
                    "page_size": 100,
                    "query": json.dumps(query),
                },
            )
            tasks = body.get("tasks", [])
            for t in tasks:
                data = t.get("data", {})
                if data.get(field) == value and data.get("defectloop_key"):
                    found[str(data["defectloop_key"])] = int(t["id"])
            if len(tasks) < 100 or page * 100 >= int(body.get("total", 0)):
                return found
            page += 1

    async def find_task(self, project_id: int, key: str) -> int | None:
        """The task whose ``data.defectloop_key`` is ``key``, if any."""
        return (await self.find_tasks(project_id, "defectloop_key", key)).get(key)

    async def iter_tasks(
        self, project_id: int, *, page_size: int = 100
    ) -> AsyncIterator[dict[str, Any]]:
        """Every task of the project with its annotations (skipped ones included)."""
        page, seen = 1, 0
        while True:
            body = await self.request(
                "GET",
                "/api/tasks/",
                params={
                    "project": project_id,
                    "page": page,
                    "page_size": page_size,
                    "fields": "all",
                },
            )
            tasks = body.get("tasks", [])
            for t in tasks:
                yield t
            seen += len(tasks)
            if not tasks or seen >= int(body.get("total", 0)):
                return
            page += 1

    async def set_overlap(self, task_id: int, overlap: int) -> None:
        """Ask Label Studio to serve this task to ``overlap`` different annotators.

        Label Studio's queue (``/api/projects/{id}/next``) treats a task as done once it has
        ``task.overlap`` completed annotations and never serves it twice to the same annotator;
        the project keeps ``maximum_annotations: 1`` so single tasks stay single (changing the
        project's value would rewrite every task's overlap).
        """
        await self.request("PATCH", f"/api/tasks/{task_id}/", json={"overlap": overlap})

    async def task(self, task_id: int) -> dict[str, Any]:
        body: dict[str, Any] = await self.request("GET", f"/api/tasks/{task_id}/")
        return body

    # --- users ------------------------------------------------------------------------------

    async def users(self) -> dict[int, str]:
        body = await self.request("GET", "/api/users/")
        rows = body.get("results", body) if isinstance(body, Mapping) else body
        return {int(u["id"]): str(u.get("email") or u.get("username")) for u in rows}
