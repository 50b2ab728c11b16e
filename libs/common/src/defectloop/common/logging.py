"""structlog, configured once per process: JSON in production, console in a terminal.

Every line carries the service name and, inside a span, its ``trace_id`` and ``span_id``; the
standard library's loggers (FastStream, aiokafka, uvicorn) go through the same processors.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger


def _add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
        event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


_configured = False


def ensure_logging(
    service: str,
    *,
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "INFO",
) -> bool:
    """Configure logging unless it is configured already; True when this call configured it.

    App factories call this, so ``uvicorn --factory`` logs like ``serve()``. Already configured
    means by :func:`configure_logging`, or by whoever put handlers on the root logger (a test
    runner capturing logs, an application embedding the service): theirs stay.
    """
    if _configured or logging.getLogger().handlers:
        return False
    configure_logging(service, fmt=fmt, level=level)
    return True


def configure_logging(
    service: str,
    *,
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "INFO",
) -> None:
    global _configured
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())

    def add_service(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_service,
        _add_trace_ids,
    ]
    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka logs every retry at INFO/WARNING while a broker starts; keep it readable.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
    _configured = True


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name, **initial)
    return logger
