"""The frames cameras really send (issue 14 §3): 16-bit gray (Mono12/Mono16), RGB and RGBA PNGs
are decoded to the 8-bit gray the model expects by the rule in :mod:`defectloop.ingest.png`, with
the same limits as 8-bit gray. Property tests (Hypothesis) per mode, on OpenCV-encoded frames."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from defectloop.common.events import RejectReason
from defectloop.ingest import png

pytestmark = pytest.mark.unit

LIMITS = png.PngLimits(max_pixels=1_000_000, max_side=4096)
PROPERTY = settings(
    max_examples=120, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
SIDES = st.tuples(st.integers(1, 40), st.integers(1, 40))


def _encode(pixels: np.ndarray) -> bytes:
    """OpenCV's PNG (channel order BGR[A] in the array, RGB[A] in the file)."""
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def _luma(bgr: np.ndarray) -> np.ndarray:
    """The rule for RGB(A): BT.601 luma in libpng's 15-bit fixed point (0.299 -> 9797/32768,
    0.587 -> 19234/32768, blue the rest); 8-bit samples truncated, 16-bit rounded then their high
    byte; a pixel with R = G = B keeps its value."""
    b, g, r = (bgr[:, :, i].astype(np.int64) for i in range(3))
    weighted = 9797 * r + 19234 * g + 3737 * b
    if bgr.dtype == np.uint16:
        luma = ((weighted + 16384) >> 15) >> 8
        luma = np.where((r == g) & (g == b), r >> 8, luma)
    else:
        luma = np.where((r == g) & (g == b), r, weighted >> 15)
    return luma.astype(np.uint8)


def _frames(dtype: type[np.generic], channels: int) -> st.SearchStrategy[np.ndarray]:
    def shape(side: tuple[int, int]) -> tuple[int, ...]:
        return side if channels == 1 else (*side, channels)

    return SIDES.flatmap(lambda side: hnp.arrays(dtype, shape(side)))


def _mode(data: bytes) -> str:
    return png.read_header(data, LIMITS).mode


def _same_as_inference(data: bytes, pixels: np.ndarray) -> None:
    """The inference service decodes blobs with ``IMREAD_GRAYSCALE``: the very same pixels."""
    np.testing.assert_array_equal(pixels, cv2.imdecode(np.frombuffer(data, np.uint8), 0))


@PROPERTY
@given(frame=_frames(np.uint16, 1))
def test_gray16_is_its_high_byte(frame: np.ndarray) -> None:
    data = _encode(frame)
    decoded = png.decode(data, LIMITS)
    assert _mode(data) == "gray16"
    assert decoded.header.bit_depth == 16
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == frame.shape
    np.testing.assert_array_equal(decoded.pixels, (frame >> 8).astype(np.uint8))
    _same_as_inference(data, decoded.pixels)


@PROPERTY
@given(frame=_frames(np.uint16, 1))
def test_mono12_sent_scaled_keeps_its_top_eight_bits(frame: np.ndarray) -> None:
    mono12 = frame >> 4  # what the sensor measured, 0..4095
    decoded = png.decode(_encode((mono12 << 4).astype(np.uint16)), LIMITS)
    np.testing.assert_array_equal(decoded.pixels, (mono12 >> 4).astype(np.uint8))


@PROPERTY
@given(frame=_frames(np.uint8, 3))
def test_rgb8_is_bt601_luma(frame: np.ndarray) -> None:
    data = _encode(frame)
    decoded = png.decode(data, LIMITS)
    assert _mode(data) == "rgb8"
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.shape == frame.shape[:2]
    np.testing.assert_array_equal(decoded.pixels, _luma(frame))
    _same_as_inference(data, decoded.pixels)


@PROPERTY
@given(frame=_frames(np.uint8, 4), alpha=st.integers(0, 255))
def test_rgba8_drops_alpha(frame: np.ndarray, alpha: int) -> None:
    data = _encode(frame)
    decoded = png.decode(data, LIMITS)
    assert _mode(data) == "rgba8"
    other_alpha = frame.copy()
    other_alpha[:, :, 3] = alpha
    np.testing.assert_array_equal(decoded.pixels, png.decode(_encode(other_alpha), LIMITS).pixels)
    np.testing.assert_array_equal(decoded.pixels, _luma(frame[:, :, :3]))
    _same_as_inference(data, decoded.pixels)


@PROPERTY
@given(frame=_frames(np.uint16, 3), with_alpha=st.booleans())
def test_rgb16_and_rgba16_are_the_high_byte_of_their_luma(
    frame: np.ndarray, with_alpha: bool
) -> None:
    pixels = np.dstack([frame, frame[:, :, :1]]) if with_alpha else frame
    data = _encode(pixels)
    decoded = png.decode(data, LIMITS)
    assert _mode(data) == ("rgba16" if with_alpha else "rgb16")
    np.testing.assert_array_equal(decoded.pixels, _luma(frame))
    _same_as_inference(data, decoded.pixels)


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + ctype
        + payload
        + struct.pack(">I", zlib.crc32(ctype + payload))
    )


def _crafted(width: int, height: int, depth: int, color: int, raw: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (
        png.PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


MODES = {"gray16": (16, 0, 2), "rgb8": (8, 2, 3), "rgba8": (8, 6, 4), "rgb16": (16, 2, 6)}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_mode_keeps_the_pixel_cap_read_before_any_decompression(mode: str) -> None:
    depth, color, _ = MODES[mode]
    data = _crafted(2000, 2000, depth, color, b"")  # 4 MP over a 1 MP cap, no data at all
    with pytest.raises(png.PngRejectedError) as caught:
        png.decode(data, LIMITS)
    assert caught.value.reason is RejectReason.PIXEL_BOMB


@PROPERTY
@given(mode=st.sampled_from(sorted(MODES)), extra=st.integers(-500, 5000), side=SIDES)
def test_each_mode_refuses_image_data_other_than_the_header_promises(
    mode: str, extra: int, side: tuple[int, int]
) -> None:
    """A stream longer than width x height x bytes per pixel (a decompression bomb) or shorter is
    refused before the decoder allocates anything."""
    depth, color, bytes_per_pixel = MODES[mode]
    width, height = side
    exact = height * (1 + width * bytes_per_pixel)
    size = max(0, exact + extra)
    data = _crafted(width, height, depth, color, bytes(size))
    if size == exact:  # exactly what the header promises: decoded (all zeros)
        decoded = png.decode(data, LIMITS)
        assert decoded.pixels.shape == (height, width)
        assert not decoded.pixels.any()
        return
    with pytest.raises(png.PngRejectedError) as caught:
        png.decode(data, LIMITS)
    expected = RejectReason.UNDECODABLE if size > exact else RejectReason.TRUNCATED
    assert caught.value.reason is expected
