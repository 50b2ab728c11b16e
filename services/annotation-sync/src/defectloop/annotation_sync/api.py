"""HTTP API of annotation-sync: signed image links, the Label Studio webhook, progress, campaigns.

Roles per site (:mod:`defectloop.common.authz`): reads need any role on the site, campaign writes
need ``annotation_admin``; the image route is opened by its signed, expiring, site-scoped link and
the webhook by its secret header (Label Studio holds no API token), so both are declared public.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from defectloop.annotation_sync import signing, store
from defectloop.annotation_sync.progress import LowAgreement, agreement_figures, progress
from defectloop.annotation_sync.store import as_utc
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common import authz
from defectloop.common.blobstore import open_blob_store
from defectloop.common.errors import DefectloopError, NotFoundError, PermanentError, TransientError
from defectloop.common.events import ID_MAX_LENGTH, SITE_ID_PATTERN
from defectloop.common.http_errors import ErrorBody, error_response
from defectloop.common.logging import get_logger

log = get_logger(__name__)

SiteParam = Annotated[
    str, Path(max_length=ID_MAX_LENGTH, pattern=SITE_ID_PATTERN, description="Site id.")
]
SiteQuery = Annotated[str, Query(max_length=ID_MAX_LENGTH, pattern=SITE_ID_PATTERN)]


class _Annotation(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    task: int | None = None
    result: list[dict[str, Any]] = Field(default_factory=list)
    was_cancelled: bool = False
    completed_by: int | dict[str, Any]
    updated_at: str


class _Task(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    data: dict[str, Any] = Field(default_factory=dict)


class WebhookPayload(BaseModel):
    """What we read from a Label Studio webhook (other fields are ignored)."""

    model_config = ConfigDict(extra="allow")
    action: str = Field(..., min_length=1)
    annotation: _Annotation | None = None
    task: _Task | None = None
    annotations: list[dict[str, Any]] | None = None


class CampaignBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Bounded: an integer past 64 bits failed the database write with a 500 (Schemathesis).
    target: int = Field(..., ge=0, le=1_000_000_000, description="Annotated images wanted.")
    name: str = Field("default", min_length=1, max_length=100)
    restart: bool = Field(False, description="Start counting again from now.")


def build_router(sync: AnnotationSync) -> APIRouter:
    router = APIRouter()
    settings = sync.settings
    blobs = open_blob_store(settings.blob_url)
    hook_secret = signing.webhook_secret(settings.signing_secret)
    low_agreement = LowAgreement(settings.low_agreement_kappa, settings.low_agreement_min_pairs)
    auth = authz.Authz(sync.engine, required=settings.tokens_required)
    # Defaults, not Annotated[...]: annotations are strings here and a local does not resolve.
    reads = Depends(auth.require(authz.Permission.READ, site_param="site"))
    writes = Depends(auth.require(authz.Permission.ANNOTATION_WRITE, site_param="site"))
    signed_link = Depends(authz.public("a signed, expiring, site-scoped link"))
    webhook_secret = Depends(authz.public("Label Studio's X-Webhook-Secret"))
    token_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": ErrorBody, "description": "Bad token (missing/invalid/expired_token)."},
        403: {"model": ErrorBody, "description": "forbidden_site or forbidden_role."},
    }

    @router.get(
        "/v1/images/{image_id}",
        tags=["images"],
        dependencies=[signed_link],
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "The PNG."},
            403: {"model": ErrorBody, "description": "Invalid or expired link signature."},
            404: {"model": ErrorBody, "description": "No such image for this site."},
            503: {"model": ErrorBody, "description": "The blob store cannot be read."},
        },
    )
    def image(
        image_id: str,
        site: SiteQuery,
        exp: Annotated[int, Query()],
        # Hex only: a non-ASCII signature made hmac.compare_digest raise (a 500, Schemathesis).
        sig: Annotated[str, Query(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")],
    ) -> Response:
        """The PNG of a sampled image, for a site-scoped, expiring, signed link only."""
        problem = signing.verify(settings.signing_secret, site, image_id, exp, sig, now=time.time())
        if problem is not None:
            log.warning("image_link_refused", site_id=site, image_id=image_id, reason=problem)
            return error_response(
                403,
                problem,
                "the image link is invalid or has expired",
                "open the task again in Label Studio (links are re-signed on push)",
            )
        sample = store.get_sample(sync.engine, site, image_id)
        if sample is None:
            return error_response(404, "not_found", "no such image for this site")
        try:
            data = blobs.get(sample.blob_uri)
        except NotFoundError as exc:
            return error_response(404, exc.reason, str(exc))
        except DefectloopError as exc:
            return error_response(503, exc.reason, str(exc))
        return Response(
            data,
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=3600", "Access-Control-Allow-Origin": "*"},
        )

    @router.post(
        "/v1/labelstudio/webhook",
        tags=["labelstudio"],
        dependencies=[webhook_secret],
        responses={
            400: {"model": ErrorBody, "description": "The body is not JSON (malformed_payload)."},
            401: {"model": ErrorBody, "description": "Missing or wrong X-Webhook-Secret."},
        },
    )
    async def webhook(
        request: Request,
        site: SiteQuery,
        x_webhook_secret: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Label Studio annotation events (fire-and-forget: the poll reconciles what is lost)."""
        # Bytes: compare_digest raises TypeError on a non-ASCII str (a header is latin-1 text).
        given = None if x_webhook_secret is None else x_webhook_secret.encode()
        if given is None or not hmac.compare_digest(given, hook_secret.encode()):
            log.warning("webhook_refused", site_id=site, reason="bad_secret")
            return error_response(
                401,
                "bad_secret",
                "missing or wrong X-Webhook-Secret",
                "the webhook is registered by annotation-sync; do not post to it by hand",
            )
        body = await request.body()
        try:
            payload = WebhookPayload.model_validate(json.loads(body))
        except (ValueError, ValidationError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("webhook_malformed", site_id=site, error=str(exc)[:500])
            return error_response(
                422 if isinstance(exc, ValidationError) else 400, "malformed_payload", detail
            )
        try:
            return await _handle(payload, site)
        except PermanentError as exc:
            log.warning(
                "webhook_unprocessable", site_id=site, action=payload.action, error=str(exc)
            )
            return error_response(422, exc.reason, str(exc))
        except TransientError as exc:
            log.warning("webhook_deferred", site_id=site, action=payload.action, error=str(exc))
            return error_response(
                503, exc.reason, str(exc), "the reconciliation poll will pick it up"
            )

    async def _handle(payload: WebhookPayload, site: str) -> JSONResponse:
        action = payload.action
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            if payload.annotation is None or payload.task is None:
                return error_response(
                    422, "malformed_payload", f"{action} needs annotation and task"
                )
            event = await sync.on_annotation(
                site, payload.task.model_dump(), payload.annotation.model_dump()
            )
            return JSONResponse(
                {
                    "status": "emitted" if event else "duplicate",
                    "annotation_id": event.annotation_id if event else None,
                }
            )
        if action == "ANNOTATIONS_DELETED":
            ids = [int(a["id"]) for a in payload.annotations or [] if "id" in a]
            return JSONResponse({"status": "deleted", "count": await sync.on_deleted(site, ids)})
        if action == "ANNOTATIONS_CREATED":
            return JSONResponse({"status": "emitted", "count": await sync.reconcile(site)})
        return JSONResponse({"status": "ignored", "action": action})

    def label_requests(site: str) -> list[dict[str, Any]]:
        return [s.as_dict() for s in sync.request_states(site)]

    @router.get(
        "/v1/sites/{site}/annotation/progress",
        tags=["progress"],
        dependencies=[reads],
        responses=token_errors,
    )
    def site_progress(site: SiteParam) -> dict[str, Any]:
        """Per annotator per day (annotated, skipped), per day, campaign vs target, agreement
        (per site and per annotator pair), and the monitor's label requests."""
        campaign = store.get_campaign(sync.engine, site, settings.default_campaign_target)
        start = as_utc(campaign.started_at)
        body = progress(
            site,
            store.current_annotations(sync.engine, site),
            campaign,
            sampled_in_campaign=store.count_sampled(sync.engine, site, since=start),
            campaign_start=start,
            low=low_agreement,
        )
        body["label_requests"] = label_requests(site)
        return body

    @router.get(
        "/v1/sites/{site}/annotation/agreement",
        tags=["progress"],
        dependencies=[reads],
        responses=token_errors,
    )
    def site_agreement(site: SiteParam) -> dict[str, Any]:
        """Inter-annotator agreement of the site's overlap images: overall and per pair."""
        records = store.current_annotations(sync.engine, site)
        return {"site": site, **agreement_figures(records, low_agreement)}

    @router.get(
        "/v1/sites/{site}/campaigns",
        tags=["progress"],
        dependencies=[reads],
        responses=token_errors,
    )
    def get_campaign(site: SiteParam) -> dict[str, Any]:
        """The campaign target, and the monitor's label requests (active or not) with progress."""
        c = store.get_campaign(sync.engine, site, settings.default_campaign_target)
        return {
            "site": site,
            "name": c.name,
            "target": c.target,
            "started_at": as_utc(c.started_at).isoformat(),
            "label_requests": label_requests(site),
        }

    @router.put(
        "/v1/sites/{site}/campaigns",
        tags=["progress"],
        dependencies=[writes],
        responses={
            400: {"model": ErrorBody, "description": "The body is not JSON."},
            **token_errors,
        },
    )
    def put_campaign(site: SiteParam, body: CampaignBody) -> dict[str, Any]:
        c = store.put_campaign(sync.engine, site, body.target, body.name, body.restart)
        log.info("campaign_set", site_id=site, target=c.target, name=c.name)
        return {
            "site": site,
            "name": c.name,
            "target": c.target,
            "started_at": as_utc(c.started_at).isoformat(),
        }

    return router


def install(app: FastAPI, sync: AnnotationSync) -> None:
    app.include_router(build_router(sync))
