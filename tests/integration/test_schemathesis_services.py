"""Schemathesis against each service's OpenAPI document (issue 12 §4), on the real broker.

Each service is built from its settings and served for real (uvicorn on 127.0.0.1, lifespan
included); Schemathesis reads ``/openapi.json`` and generates requests for every operation,
valid and invalid ones. Checks: no server error, no status code the document does not declare,
no schema-valid request rejected, responses match their declared schema and content type.
Runs are kept small (``max_examples`` 30 per operation) so the whole file takes well under 2 min.

Ingest needs a valid token for the site in the path and PNG bodies to accept a request: the token
is sent with every case and its site put in the path; ``image/png`` bodies are real textured
frames (a random byte string is a schema-valid ``binary`` but not a PNG, answered 415).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from defectloop.testing.http import serve_in_thread
from defectloop.testing.net import wait_until

pytestmark = pytest.mark.integration

SETTINGS = {
    "ingest": "IngestSettings",
    "inference": "InferenceSettings",
    "annotation_sync": "AnnotationSyncSettings",
    "monitor": "MonitorSettings",
    "trainer": "TrainerSettings",
}
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.positive_data_acceptance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]
RUN = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same cases every run: a CI failure reproduces locally
    suppress_health_check=list(HealthCheck),
)


def textured_png(seed: int) -> bytes:
    """A grayscale frame that passes ingest's quality floors (texture, mid brightness)."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(40, 200, 64)[None, :].repeat(48, axis=0)
    pixels = np.clip(gradient + rng.normal(0, 18, (48, 64)), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


schemathesis.openapi.media_type("image/png", st.integers(0, 2**32 - 1).map(textured_png))


@contextmanager
def served(service: str, kafka_bootstrap: str, root: Path) -> Iterator[tuple[Any, str]]:
    """The service app, healthy on the real broker, and its base URL."""
    main = importlib.import_module(f"defectloop.{service}.main")
    settings_cls = getattr(
        importlib.import_module(f"defectloop.{service}.settings"), SETTINGS[service]
    )
    app = main.build_app(
        settings_cls(kafka_bootstrap=kafka_bootstrap, database_url=f"sqlite:///{root}/db.sqlite")
    )
    with serve_in_thread(app, timeout_s=60) as url:

        async def healthy() -> bool:
            async with httpx.AsyncClient(base_url=url, timeout=5) as client:
                return (await client.get("/health")).status_code == 200

        asyncio.run(wait_until(healthy, timeout_s=60, what=f"{service} to report healthy"))
        yield app, url


def _explore(
    operation: Any,
    mode: GenerationMode,
    *,
    headers: dict[str, str],
    path_parameters: dict[str, str],
    found: dict[str, str],
) -> None:
    """Run the checks on ``operation``'s cases of ``mode``; every failure kept (not only the
    first), once per operation, mode and kind."""
    fixed = {k: v for k, v in path_parameters.items() if f"{{{k}}}" in operation.path}
    use_fixed = mode is GenerationMode.POSITIVE and fixed
    strategy = operation.as_strategy(
        generation_mode=mode, path_parameters=fixed if use_fixed else None
    )

    @RUN
    @given(case=strategy)
    def run(case: Any) -> None:
        try:
            case.call_and_validate(headers=headers, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup included
            key = f"{operation.label} [{mode.value}] {type(exc).__name__}"
            found.setdefault(key, "\n    ".join(str(exc).strip().splitlines()[:14]))

    with contextlib.suppress(Unsatisfiable):  # no invalid variant (no parameters, no body)
        run()


def _findings(
    schema: Any, *, headers: dict[str, str], path_parameters: dict[str, str]
) -> list[str]:
    found: dict[str, str] = {}
    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _explore(
                result.ok(), mode, headers=headers, path_parameters=path_parameters, found=found
            )
    return [f"{key}:\n    {detail}" for key, detail in sorted(found.items())]


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_schemathesis_finds_nothing(service: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    with served(service, kafka_bootstrap, tmp_path) as (app, url):
        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        headers: dict[str, str] = {}
        path_parameters: dict[str, str] = {}
        if service == "ingest":
            from defectloop.ingest import auth

            path_parameters["site"] = "schemathesis"
            token = auth.issue_token(app.state.engine, "schemathesis").token
            headers["Authorization"] = f"Bearer {token}"
        findings = _findings(schema, headers=headers, path_parameters=path_parameters)
    assert not findings, f"{len(findings)} finding(s):\n" + "\n".join(findings)
