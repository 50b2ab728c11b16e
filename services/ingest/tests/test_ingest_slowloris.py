"""Slow-loris at ingest (issue 12 §4): raw sockets against the real uvicorn server.

Ingest runs as in production (``common.service.serve``: uvicorn with its default limits,
``timeout_keep_alive`` 5 s and h11's 16 KiB cap on an incomplete request head), on the real
broker. Clients that open connections and trickle their request line, headers or body one piece
at a time must not starve normal gateways; a head past h11's cap is refused; an idle kept-alive
connection is closed by the server.

What this does **not** show (docs/reliability.md): uvicorn 0.54 has no deadline on a request
head or body still arriving, so a trickling connection is held as long as its client keeps
sending. Each one costs a socket and a few KiB, not a worker: the event loop serves everyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from defectloop.ingest import auth
from defectloop.ingest.main import build_app
from defectloop.ingest.settings import IngestSettings
from defectloop.testing.http import serve
from defectloop.testing.net import wait_until

pytestmark = pytest.mark.integration

SLOW_HEADS = 120
SLOW_BODIES = 30
NORMAL_UPLOADS = 24
UPLOAD_ROUTE = "/v1/sites/{site}/cameras/{camera}/images"
TRICKLE_S = 0.2
"""The trickle rate of a slow client (one piece per period): load, not synchronisation."""


def ingest_app(kafka_bootstrap: str, tmp_path: Path) -> Any:
    return build_app(
        IngestSettings(
            kafka_bootstrap=kafka_bootstrap,
            database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
            blob_url=(tmp_path / "blobs").as_uri(),
        )
    )


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def trickle(
    url: str, head: bytes, piece: Callable[[int], bytes], opened: asyncio.Event, stop: asyncio.Event
) -> int:
    """Send ``head``, then ``piece(n)`` once per period until ``stop`` or the server closes;
    how many pieces were sent."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    sent = 0
    try:
        writer.write(head)
        await writer.drain()
        opened.set()
        while not stop.is_set() and not reader.at_eof():
            writer.write(piece(sent))
            await writer.drain()
            sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TRICKLE_S)
    except ConnectionError:
        pass
    finally:
        writer.close()
    return sent


async def trickle_head(url: str, path: str, opened: asyncio.Event, stop: asyncio.Event) -> int:
    """Send a request line, then one header line per period, never the blank line."""
    head = f"POST {path} HTTP/1.1\r\nHost: ingest\r\n".encode()
    return await trickle(url, head, lambda n: f"X-Slow-{n}: {'a' * 8}\r\n".encode(), opened, stop)


async def trickle_body(
    url: str, path: str, token: str, opened: asyncio.Event, stop: asyncio.Event
) -> int:
    """Send a whole head announcing 100 kB of PNG, then one byte of body per period."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
    ).encode()
    return await trickle(url, head, lambda _: b"\x89", opened, stop)


async def read_until_closed(reader: asyncio.StreamReader, timeout_s: float = 30.0) -> bytes:
    """What the server sent before it closed (a reset, when it closed with our bytes unread,
    counts as closed)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)  # read() returns at EOF
    except ConnectionResetError:
        return b""


async def exchange(url: str, request: bytes) -> bytes:
    """Send ``request`` on a new connection; what the server sent before it closed."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    try:
        writer.write(request)
        await writer.drain()
    except ConnectionError:
        pass  # the server may close before every byte is written
    answer = await read_until_closed(reader)
    writer.close()
    return answer


def answered(metrics: str, status: str) -> float:
    """Ingest's upload requests answered with ``status``, from its Prometheus text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "defectloop_http_requests_total"
        and sample.labels.get("route") == UPLOAD_ROUTE
        and sample.labels.get("status") == status
    )


async def test_slow_loris_clients_do_not_starve_normal_uploads(
    kafka_bootstrap: str, tmp_path: Path, pngs: Any
) -> None:
    app = ingest_app(kafka_bootstrap, tmp_path)
    site = "loris" + uuid.uuid4().hex[:8]
    async with serve(app) as url, httpx.AsyncClient(timeout=60) as client:

        async def ready() -> bool:
            return (await client.get(f"{url}/health")).status_code == 200

        await wait_until(ready, timeout_s=60, what="ingest connected to Kafka")
        token = auth.issue_token(app.state.engine, site, "cam-1").token
        path = f"/v1/sites/{site}/cameras/cam-1/images"
        before = (await client.get(f"{url}/metrics")).text
        stop = asyncio.Event()
        opened = [asyncio.Event() for _ in range(SLOW_HEADS + SLOW_BODIES)]
        slow = [
            asyncio.create_task(trickle_head(url, path, opened[i], stop)) for i in range(SLOW_HEADS)
        ] + [
            asyncio.create_task(trickle_body(url, path, token, opened[SLOW_HEADS + i], stop))
            for i in range(SLOW_BODIES)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in opened)), 60)
            statuses = []
            for i in range(NORMAL_UPLOADS):
                response = await client.post(
                    f"{url}{path}",
                    content=pngs.valid(20_000 + i),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
                )
                statuses.append(response.status_code)
            # Every slow client is still connected and trickling while the uploads were served.
            still_open = sum(not t.done() for t in slow)
        finally:
            stop.set()
            pieces = await asyncio.gather(*slow)

        async def bodies_answered() -> str | None:
            # A slow body whose client hung up is answered 400 client_disconnected (it was 500).
            text = (await client.get(f"{url}/metrics")).text
            done = answered(text, "400") - answered(before, "400") >= SLOW_BODIES
            return text if done else None

        after = await wait_until(bodies_answered, timeout_s=60, what="the slow bodies answered")
    assert answered(after, "500") == answered(before, "500")
    assert statuses == [202] * NORMAL_UPLOADS
    assert still_open == SLOW_HEADS + SLOW_BODIES
    assert all(p >= 1 for p in pieces)
    print(
        f"slow_heads={SLOW_HEADS} slow_bodies={SLOW_BODIES} normal={NORMAL_UPLOADS} "
        f"accepted={statuses.count(202)} pieces_trickled={sum(pieces)}"
    )


async def test_a_request_head_past_the_h11_cap_is_refused_and_closed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app = ingest_app(kafka_bootstrap, tmp_path)
    head = b"POST /v1/sites/a/cameras/b/images HTTP/1.1\r\nHost: ingest\r\n"
    # 64 KiB of headers without the blank line: past h11's 16 KiB incomplete-event cap.
    pad = b"".join(f"X-Pad-{i}: {'b' * 56}\r\n".encode() for i in range(1024))
    async with serve(app) as url:
        answer = await exchange(url, head + pad)
    # Refused with a 400 (or reset before the answer could be read) and closed, not held.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]


async def test_an_idle_kept_alive_connection_is_closed_by_the_server(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app = ingest_app(kafka_bootstrap, tmp_path)
    async with serve(app) as url:
        # No second request: uvicorn closes the connection after timeout_keep_alive (5 s).
        answer = await exchange(url, b"GET /health HTTP/1.1\r\nHost: ingest\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    assert b"\r\n\r\n" in answer
