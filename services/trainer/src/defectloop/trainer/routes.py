"""HTTP API of the trainer service: its retraining jobs, for ops and the live demo view."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict

from defectloop.common.events import ID_MAX_LENGTH, SITE_ID_PATTERN
from defectloop.common.http_errors import ErrorBody
from defectloop.trainer.jobs import Job, JobStore

SiteQuery = Annotated[
    str | None, Query(max_length=ID_MAX_LENGTH, pattern=SITE_ID_PATTERN, description="Site id.")
]


class JobView(BaseModel):
    """One retraining job as ops see it: where it is, why, and with what numbers."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    site_id: str
    state: str
    reason: str
    kind: str
    incident_ids: list[str]
    change_point_at: datetime
    deadline_at: datetime
    model_version: str | None
    attempt: int
    fresh_labels: int
    fresh_defective: int
    labels_request_id: str | None
    snapshot_sha256: str | None
    candidate_version: str | None
    detail: dict[str, Any]
    opened_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(
            **job.model_dump(
                exclude={"incident_ids_json", "detail_json", "run_handle", "labels_requested_at"}
            ),
            incident_ids=job.incident_ids,
            detail=job.detail,
        )


def install(app: FastAPI, store: JobStore) -> None:
    router = APIRouter(prefix="/v1", tags=["jobs"])

    @router.get("/jobs", response_model=list[JobView])
    async def list_jobs(site: SiteQuery = None) -> list[JobView]:
        """Every job (of ``site``), oldest first, ignored incidents included."""
        return [JobView.of(j) for j in await asyncio.to_thread(store.jobs, site)]

    @router.get(
        "/jobs/{job_id}",
        response_model=JobView,
        responses={404: {"model": ErrorBody, "description": "No job with this id (not_found)."}},
    )
    async def get_job(
        job_id: Annotated[str, Path(max_length=ID_MAX_LENGTH, description="Job id.")],
    ) -> JobView:
        """One job; 404 ``not_found`` when there is none with this id."""
        return JobView.of(await asyncio.to_thread(store.get, job_id))

    app.include_router(router)
