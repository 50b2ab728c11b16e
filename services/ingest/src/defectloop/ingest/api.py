"""HTTP routes (thin): authenticate, stream the body with a limit, hand it to the pipeline.

Errors are raised as project errors and answered by the shared app shell with the one body
``{"error", "detail", "hint"}`` (``defectloop.common.http_errors``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from anyio import to_thread
from fastapi import APIRouter, Header, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, WithJsonSchema
from sqlalchemy.engine import Engine

from defectloop.common.events import (
    CAMERA_ID_PATTERN,
    ID_MAX_LENGTH,
    SITE_ID_PATTERN,
    RejectReason,
)
from defectloop.common.http_errors import ErrorBody, error_example
from defectloop.common.logging import get_logger
from defectloop.ingest import auth
from defectloop.ingest.pipeline import Ingestor
from defectloop.ingest.ratelimit import UploadLimiter

log = get_logger(__name__)


class IngestResponse(BaseModel):
    image_id: str = Field(
        ...,
        description="Deterministic id: the same bytes from the same camera give the same id.",
        examples=["0b8f5c1e-7d2a-5f3b-9c4e-1a2b3c4d5e6f"],
    )
    status: Literal["accepted", "duplicate"] = Field(
        ...,
        description="accepted: stored and image.captured acknowledged by Kafka now; "
        "duplicate: these bytes were already accepted for this camera (nothing new published).",
    )


_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Stored, recorded and published (or a duplicate of an accepted image).",
        "content": {
            "application/json": {
                "examples": {
                    "accepted": {
                        "value": {
                            "image_id": "0b8f5c1e-7d2a-5f3b-9c4e-1a2b3c4d5e6f",
                            "status": "accepted",
                        }
                    },
                    "duplicate": {
                        "value": {
                            "image_id": "0b8f5c1e-7d2a-5f3b-9c4e-1a2b3c4d5e6f",
                            "status": "duplicate",
                        }
                    },
                }
            }
        },
    },
    401: {
        "model": ErrorBody,
        "description": "Missing, malformed, unknown or revoked token (reason missing_token or "
        "invalid_token). Nothing is published.",
        "content": {
            "application/json": {
                "examples": {
                    "missing_token": error_example(
                        "missing_token",
                        "an Authorization: Bearer <token> header is required",
                        "create one: defectloop gateway-token",
                    ),
                }
            }
        },
    },
    403: {
        "model": ErrorBody,
        "description": "The token belongs to another site (forbidden_site) or camera "
        "(forbidden_camera). Nothing is published.",
        "content": {
            "application/json": {
                "examples": {
                    "forbidden_site": error_example(
                        "forbidden_site", "this token may not post to this site"
                    ),
                }
            }
        },
    },
    413: {
        "model": ErrorBody,
        "description": "Body larger than max_body_bytes (too_large).",
        "content": {
            "application/json": {
                "examples": {
                    "too_large": error_example("too_large", "the body exceeds 20971520 bytes"),
                }
            }
        },
    },
    415: {
        "model": ErrorBody,
        "description": "Content-Type is not image/png (wrong_content_type) or the body is not a "
        "PNG (not_png).",
        "content": {
            "application/json": {
                "examples": {
                    "not_png": error_example(
                        "not_png",
                        "the body does not start with a PNG signature",
                        "encode the frame as PNG",
                    ),
                    "wrong_content_type": error_example(
                        "wrong_content_type", "Content-Type is image/jpeg"
                    ),
                }
            }
        },
    },
    422: {
        "model": ErrorBody,
        "description": "empty, truncated, undecodable, pixel_bomb, unsupported_format, or a "
        "quality floor: uniform_frame, too_blurry, too_dark, too_bright; invalid_request for "
        "malformed path or headers.",
        "content": {
            "application/json": {
                "examples": {
                    "pixel_bomb": error_example(
                        "pixel_bomb",
                        "60000x60000 exceeds the limits (5242880 pixels, 8192 per side)",
                    ),
                    "uniform_frame": error_example(
                        "uniform_frame", "the frame is uniform (contrast 0.00)"
                    ),
                }
            }
        },
    },
    429: {
        "model": ErrorBody,
        "description": "The gateway token or the site is over its upload limit (rate_limited); "
        "nothing was read, stored or published: retry after Retry-After seconds.",
        "headers": {
            "Retry-After": {
                "schema": {"type": "integer"},
                "description": "Seconds until the limit admits one more upload.",
            }
        },
        "content": {
            "application/json": {
                "examples": {
                    "rate_limited": error_example(
                        "rate_limited",
                        "gateway token 3f2a is over its upload limit (200 per 1 second)",
                        "retry after 1 s",
                    ),
                }
            }
        },
    },
    503: {
        "model": ErrorBody,
        "description": "Kafka did not acknowledge in time (broker_unavailable); retry after "
        "Retry-After seconds. The image is kept and published on the retry.",
        "headers": {
            "Retry-After": {
                "schema": {"type": "integer"},
                "description": "Seconds to wait before retrying.",
            }
        },
        "content": {
            "application/json": {
                "examples": {
                    "broker_unavailable": error_example(
                        "broker_unavailable", "Kafka did not acknowledge within 5 s", "retry later"
                    ),
                }
            }
        },
    },
}


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it exceeds ``limit`` (the rest is never read)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    buffer = bytearray()
    async for chunk in request.stream():
        if len(buffer) + len(chunk) > limit:
            return None
        buffer += chunk
    return bytes(buffer)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


router = APIRouter()
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="gatewayToken",
    description="Per-site gateway token: dlg_<token id>_<secret> (defectloop gateway-token).",
)


@router.post(
    "/v1/sites/{site}/cameras/{camera}/images",
    status_code=202,
    response_model=IngestResponse,
    responses=_RESPONSES,
    tags=["images"],
    summary="Upload one camera frame (PNG)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The PNG file, 8-bit grayscale by default.",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
    },
)
async def post_image(
    request: Request,
    site: Annotated[
        str, Path(max_length=ID_MAX_LENGTH, pattern=SITE_ID_PATTERN, description="Site id.")
    ],
    camera: Annotated[
        str, Path(max_length=ID_MAX_LENGTH, pattern=CAMERA_ID_PATTERN, description="Camera id.")
    ],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
    # Declared as the plain optional string it is on the wire: FastAPI's `anyOf [.., null]` for
    # an Optional header let clients (Schemathesis) send the text "null", which is not a date.
    x_captured_at: Annotated[
        datetime | None,
        Header(description="When the camera took the frame (ISO 8601)."),
        WithJsonSchema({"type": "string", "format": "date-time"}),
    ] = None,
    x_line_id: Annotated[
        str | None,
        Header(max_length=64, description="Production line of the camera."),
        WithJsonSchema({"type": "string", "maxLength": 64}),
    ] = None,
) -> IngestResponse:
    """Authenticate the gateway, validate the PNG, measure its quality, store it and publish
    ``image.captured``. Answers 202 only after Kafka acknowledged the event."""
    ingestor: Ingestor = request.app.state.ingestor
    engine: Engine = request.app.state.engine
    try:
        token = auth.bearer_token(
            f"{credentials.scheme} {credentials.credentials}" if credentials else None
        )
        identity = await to_thread.run_sync(auth.authenticate, engine, token)
        auth.authorize(identity, site, camera)
    except auth.AuthError as exc:
        log.warning("gateway_auth_failed", token_id=exc.token_id, reason=exc.reason)
        raise
    # Before the body is read: a refused upload costs no decoding, storing or publishing.
    limiter: UploadLimiter = request.app.state.upload_limiter
    limiter.admit(identity.token_id, site)

    media_type = _media_type(content_type)
    if media_type != "image/png":
        raise await ingestor.reject(
            site,
            camera,
            RejectReason.WRONG_CONTENT_TYPE,
            f"Content-Type is {media_type or 'missing'}, expected image/png",
        )
    limit = ingestor.settings.max_body_bytes
    data = await read_limited(request, limit)
    if data is None:
        declared = request.headers.get("content-length", "")
        raise await ingestor.reject(
            site,
            camera,
            RejectReason.TOO_LARGE,
            f"the body exceeds {limit} bytes",
            size_bytes=int(declared) if declared.isdigit() else None,
        )
    captured_at = x_captured_at
    if captured_at is not None and captured_at.tzinfo is None:
        captured_at = captured_at.replace(tzinfo=UTC)
    outcome = await ingestor.ingest(site, camera, data, captured_at=captured_at, line_id=x_line_id)
    log.info(
        "upload_done",
        token_id=identity.token_id,
        site_id=site,
        camera_id=camera,
        image_id=outcome.image_id,
        status=outcome.status,
    )
    return IngestResponse(image_id=outcome.image_id, status=outcome.status)
