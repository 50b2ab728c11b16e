"""Per-message and per-request log context, bound once with structlog's contextvars.

Every line logged while a Kafka message or an HTTP request is handled carries where it came
from, without repeating ids by hand on each line:

- Kafka (:class:`KafkaLogContextMiddleware`, registered by ``build_broker``): ``topic``,
  ``partition``, ``offset`` and, from the event body, ``event_id``, ``site_id``, ``camera_id``,
  ``image_id``; a batch binds its topic, partition, first offset and ``batch_size``.
- HTTP (:mod:`defectloop.common.http_log_context`, installed by ``build_service_app``):
  ``request_id``, ``method``, ``path``, ``trace_id`` of an incoming ``traceparent``, and the
  route's site/camera/image path parameters.

Inside an OpenTelemetry span the log processor adds the span's own ``trace_id``/``span_id``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from faststream import BaseMiddleware
from faststream.message import StreamMessage
from structlog.contextvars import bound_contextvars

EVENT_FIELDS = ("event_id", "site_id", "camera_id", "image_id")


def record_fields(raw: Any) -> dict[str, Any]:
    """topic/partition/offset of an aiokafka record, or of the first record of a batch."""
    records = raw if isinstance(raw, tuple) else (raw,)
    if not records:
        return {}
    first = records[0]
    fields = {
        name: getattr(first, name)
        for name in ("topic", "partition", "offset")
        if hasattr(first, name)
    }
    if isinstance(raw, tuple):
        fields["batch_size"] = len(records)
    return fields


def event_fields(body: Any) -> dict[str, Any]:
    """The ids an event body carries (``event_id``, ``site_id``, ``camera_id``, ``image_id``)."""
    if not isinstance(body, Mapping):
        return {}
    return {name: body[name] for name in EVENT_FIELDS if isinstance(body.get(name), str)}


class KafkaLogContextMiddleware(BaseMiddleware):
    """Binds the message's coordinates and event ids around its handler."""

    async def consume_scope(
        self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
    ) -> Any:
        fields = record_fields(msg.raw_message)
        if not isinstance(msg.raw_message, tuple):
            # Not JSON (ValueError): the handler's validation dead-letters it with its reason.
            with contextlib.suppress(ValueError):
                # Cached by FastStream: the handler's own decoding reuses this result.
                fields.update(event_fields(await msg.decode()))
        with bound_contextvars(**fields):
            return await call_next(msg)
