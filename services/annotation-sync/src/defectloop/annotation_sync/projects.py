"""The project registry: each site's Label Studio client and project (with its webhook).

A site's project is looked up by title, created when missing, and cached for the life of the
service; its annotators' names (Label Studio user ids -> emails) are cached alongside.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from defectloop.annotation_sync import convert, signing
from defectloop.annotation_sync.labelstudio import LabelStudioClient
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.common.logging import get_logger

log = get_logger(__name__)

ClientFactory = Callable[[str], LabelStudioClient]


@dataclass
class SiteProject:
    client: LabelStudioClient
    project_id: int
    users: dict[int, str] = field(default_factory=dict)


class ProjectRegistry:
    def __init__(
        self, settings: AnnotationSyncSettings, client_factory: ClientFactory | None = None
    ) -> None:
        self.settings = settings
        self._client_factory = client_factory or self._default_client
        self._sites: dict[str, SiteProject] = {}
        self._lock = asyncio.Lock()

    def _default_client(self, site: str) -> LabelStudioClient:
        inst = self.settings.instance_for(site)
        return LabelStudioClient(
            inst.url,
            inst.token,
            timeout_s=self.settings.label_studio_timeout_s,
            attempts=self.settings.label_studio_retries,
            backoff_s=self.settings.label_studio_backoff_s,
        )

    async def aclose(self) -> None:
        for s in self._sites.values():
            await s.client.aclose()
        self._sites.clear()

    async def site(self, site: str) -> SiteProject:
        """The site's Label Studio project (created with its webhook when missing)."""
        async with self._lock:
            found = self._sites.get(site)
            if found is not None:
                return found
            client = self._client_factory(site)
            try:
                project_id = await client.ensure_project(site, convert.label_config())
                await client.ensure_webhook(
                    project_id,
                    f"{self.settings.hook_url()}?site={site}",
                    signing.webhook_secret(self.settings.signing_secret),
                )
            except BaseException:
                await client.aclose()
                raise
            found = SiteProject(client, project_id)
            self._sites[site] = found
            log.info(
                "labelstudio_site_ready", site_id=site, project_id=project_id, url=client.base_url
            )
            return found

    def known_sites(self) -> list[str]:
        return sorted(self._sites)

    async def annotator(self, project: SiteProject, completed_by: Any) -> str:
        """The annotator's name (email) for Label Studio's ``completed_by`` (id or dict)."""
        uid = completed_by.get("id") if isinstance(completed_by, dict) else completed_by
        if isinstance(uid, int) and uid not in project.users:
            project.users.update(await project.client.users())
        return convert.annotator_name(completed_by, project.users)
