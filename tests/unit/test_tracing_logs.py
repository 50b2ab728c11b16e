"""structlog lines carry the span's trace_id/span_id inside a span (ours and the standard
library's loggers alike), none outside; JSON in production, console in a terminal."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# In a child process: configure_logging owns the root logger, which pytest's capture holds here.
SCRIPT = """
import logging, sys
from defectloop.common.logging import configure_logging, get_logger
from defectloop.common.tracing import build_tracer_provider

configure_logging("svc", fmt=sys.argv[1])
tracer = build_tracer_provider("svc").get_tracer("test")
log = get_logger("test")
log.info("outside_span")
with tracer.start_as_current_span("work") as span:
    log.info("inside_span", images=3)
    logging.getLogger("aiokafka.like").warning("stdlib_inside_span")
    ctx = span.get_span_context()
    print(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))
"""


def _run(fmt: str) -> tuple[list[str], list[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, fmt], capture_output=True, text=True, timeout=120, check=True
    )
    return proc.stdout.split(), proc.stderr.splitlines()


def test_json_lines_inside_a_span_carry_its_trace_and_span_ids() -> None:
    (trace_id, span_id), lines = _run("json")
    records = {r["event"]: r for r in map(json.loads, lines)}
    assert "trace_id" not in records["outside_span"]
    for event in ("inside_span", "stdlib_inside_span"):
        assert (records[event]["trace_id"], records[event]["span_id"]) == (trace_id, span_id)
        assert records[event]["service"] == "svc"
    assert records["inside_span"]["images"] == 3


def test_console_rendering_is_one_readable_line_per_event() -> None:
    (trace_id, _), lines = _run("console")
    [inside] = [line for line in lines if "inside_span" in line and "stdlib" not in line]
    assert not inside.startswith("{")
    assert f"trace_id={trace_id}" in inside


def test_a_trace_backend_that_is_down_costs_one_warning_not_a_traceback_per_batch(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from structlog.testing import capture_logs

    from defectloop.common.tracing import build_tracer_provider
    from defectloop.testing.net import free_port

    nobody = f"http://127.0.0.1:{free_port()}/api/v2/spans"  # nothing listens there
    provider = build_tracer_provider("svc", zipkin_endpoint=nobody)
    tracer = provider.get_tracer("test")
    with caplog.at_level("WARNING"), capture_logs() as logged:
        for _ in range(3):
            with tracer.start_as_current_span("work"):
                pass
            provider.force_flush()
    provider.shutdown()
    failures = [e for e in logged if e["event"] == "trace_export_failed"]
    assert len(failures) == 1
    assert failures[0]["target"] == nobody
    assert not any(r.exc_info for r in caplog.records), "no traceback from the span processor"
