"""Property tests (Hypothesis) of ingest's PNG validator (issue 12 §4): whatever the bytes, the
answer is a decoded image or one :class:`PngRejectedError` with a known reason, never another
exception (which the API would answer 500)."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defectloop.common.events import RejectReason
from defectloop.ingest import png

pytestmark = pytest.mark.unit

LIMITS = png.PngLimits(max_pixels=1_000_000, max_side=4096, max_text_chunk_bytes=64 * 1024)
PROPERTY = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


def _answer(data: bytes) -> png.DecodedPng | RejectReason:
    try:
        return png.decode(data, LIMITS)
    except png.PngRejectedError as exc:
        reason = exc.reason
    assert isinstance(reason, RejectReason)
    return reason


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(ctype + payload)
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


@PROPERTY
@given(data=st.binary(max_size=4096))
def test_any_bytes_decode_or_get_one_reason(data: bytes) -> None:
    _answer(data)


@PROPERTY
@given(
    data=st.binary(max_size=2048),
)
def test_any_bytes_after_the_signature_decode_or_get_one_reason(data: bytes) -> None:
    _answer(png.PNG_SIGNATURE + data)


@PROPERTY
@given(
    seed=st.integers(0, 1000),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
    extra=st.one_of(
        st.none(),
        st.tuples(st.binary(min_size=4, max_size=4), st.binary(max_size=512)),
    ),
)
def test_edited_valid_frames_decode_or_get_one_reason(
    pngs: Any, seed: int, flips: list[tuple[int, int]], cut: int | None, extra: Any
) -> None:
    base = pngs.valid(seed, height=32, width=40)
    data = bytearray(base)
    if extra is not None:  # a chunk of any type and payload, with a correct CRC, after IHDR
        data[33:33] = _chunk(extra[0], extra[1])
    for at, bit in flips:
        data[at % len(data)] ^= 1 << bit
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    answer = _answer(bytes(data))
    if isinstance(answer, png.DecodedPng):
        assert answer.header.width * answer.header.height <= LIMITS.max_pixels
