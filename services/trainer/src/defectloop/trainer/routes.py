"""HTTP API of the trainer service: its retraining jobs, for ops and the live demo view.

Roles per site (:mod:`defectloop.common.authz`): every route reads (any role on the job's site). A
job's site is known once it is loaded, so ``GET /v1/jobs/{id}`` checks it then (403
``forbidden_site``); ``GET /v1/jobs`` lists only the token's sites, and ``?site=`` of another site
is refused. Approval and promotion are not on HTTP (``defectloop models approve``: governance
refuses the model's author); when they are, they declare ``Permission.APPROVE`` and take the
token's user as the actor.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query
from pydantic import BaseModel, ConfigDict

from defectloop.common import authz
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


def install(app: FastAPI, store: JobStore, *, tokens_required: bool = False) -> None:
    # The API-token table sits in the trainer's own database, beside the jobs.
    auth = authz.Authz(store.engine, required=tokens_required)
    # Defaults, not Annotated[...]: annotations are strings here and a local does not resolve.
    reads_site = Depends(auth.require(authz.Permission.READ, site_query="site"))
    reads = Depends(auth.require(authz.Permission.READ))
    router = APIRouter(
        prefix="/v1",
        tags=["jobs"],
        responses={
            401: {"model": ErrorBody, "description": "Bad token (missing/invalid/expired_token)."},
            403: {"model": ErrorBody, "description": "forbidden_site or forbidden_role."},
        },
    )

    @router.get("/jobs", response_model=list[JobView])
    async def list_jobs(
        site: SiteQuery = None, principal: authz.Principal = reads_site
    ) -> list[JobView]:
        """Every job (of ``site``) on the token's sites, oldest first, ignored incidents included."""
        jobs = await asyncio.to_thread(store.jobs, site)
        return [JobView.of(j) for j in jobs if principal.covers(j.site_id)]

    @router.get(
        "/jobs/{job_id}",
        response_model=JobView,
        responses={404: {"model": ErrorBody, "description": "No job with this id (not_found)."}},
    )
    async def get_job(
        job_id: Annotated[str, Path(max_length=ID_MAX_LENGTH, description="Job id.")],
        principal: authz.Principal = reads,
    ) -> JobView:
        """One job; 404 ``not_found`` when there is none with this id, 403 ``forbidden_site``
        when it is another site's."""
        job = await asyncio.to_thread(store.get, job_id)
        principal.check_site(job.site_id)
        return JobView.of(job)

    app.include_router(router)
