"""PNG validation: signature, IHDR before decoding, chunk walk, bounded inflate, decode."""

from __future__ import annotations

import time

import numpy as np
import pytest

from defectloop.common.events import RejectReason
from defectloop.ingest import png

pytestmark = pytest.mark.unit

LIMITS = png.PngLimits()


def test_valid_gray8_decodes_to_its_pixels(pngs) -> None:
    frame = pngs.frame(5)
    decoded = png.decode(pngs.encode(frame), LIMITS)
    assert decoded.header.mode == "gray8"
    assert (decoded.header.width, decoded.header.height) == (128, 96)
    np.testing.assert_array_equal(decoded.pixels, frame)


def test_ihdr_is_read_without_touching_image_data(pngs) -> None:
    data = pngs.craft(640, 480, idat=b"not even zlib")
    header = png.read_header(data, LIMITS)
    assert (header.width, header.height, header.bit_depth, header.color_type) == (640, 480, 8, 0)


def test_each_malformed_body_gets_its_reason(bad_png) -> None:
    with pytest.raises(png.PngRejectedError) as caught:
        png.decode(bad_png.body, LIMITS)
    assert caught.value.reason == RejectReason(bad_png.reason)


def test_pixel_bomb_is_refused_from_the_header_in_milliseconds(pngs) -> None:
    data = pngs.craft(60000, 60000, idat=b"")
    began = time.perf_counter()
    with pytest.raises(png.PngRejectedError) as caught:
        png.decode(data, LIMITS)
    assert caught.value.reason is RejectReason.PIXEL_BOMB
    assert time.perf_counter() - began < 1.0  # sanity bound, not a benchmark


def test_pixel_cap_follows_the_configured_camera_resolution(pngs) -> None:
    small = png.PngLimits(max_pixels=100 * 100, max_side=200)
    with pytest.raises(png.PngRejectedError) as caught:
        png.read_header(pngs.valid(1, height=120, width=120), small)
    assert caught.value.reason is RejectReason.PIXEL_BOMB


def test_accepted_modes_setting_admits_16_bit_as_gray8(pngs) -> None:
    limits = png.PngLimits(accepted_modes=frozenset({"gray8", "gray16"}))
    pixels = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    decoded = png.decode(pngs.encode(pixels), limits)
    assert decoded.header.mode == "gray16"
    np.testing.assert_array_equal(decoded.pixels, (pixels >> 8).astype(np.uint8))


def test_accepted_modes_setting_can_refuse_16_bit_and_colour(pngs) -> None:
    limits = png.PngLimits(accepted_modes=frozenset({"gray8"}))
    for pixels in (np.full((8, 8), 1000, np.uint16), np.zeros((8, 8, 3), np.uint8)):
        with pytest.raises(png.PngRejectedError) as caught:
            png.decode(pngs.encode(pixels), limits)
        assert caught.value.reason is RejectReason.UNSUPPORTED_FORMAT


def test_interlaced_png_is_accepted_and_decoded(pngs) -> None:
    frame = pngs.frame(9, height=37, width=29)
    decoded = png.decode(pngs.interlaced(frame), LIMITS)
    np.testing.assert_array_equal(decoded.pixels, frame)


def test_small_text_chunks_are_allowed(pngs) -> None:
    import zlib

    from defectloop.ingest.png import PNG_SIGNATURE

    base = pngs.valid(2)
    note = b"Comment\x00\x00" + zlib.compress(b"line 3, station 4")
    ztxt = len(note).to_bytes(4, "big") + b"zTXt" + note
    ztxt += zlib.crc32(b"zTXt" + note).to_bytes(4, "big")
    data = base[:33] + ztxt + base[33:]
    assert data.startswith(PNG_SIGNATURE)
    assert png.decode(data, LIMITS).header.width == 128


def test_random_mutations_never_crash_and_give_one_reason(pngs) -> None:
    reasons: list[RejectReason] = []
    for data in pngs.mutants(seed=1234, n=300):
        try:
            png.decode(data, LIMITS)
        except png.PngRejectedError as exc:
            reasons.append(exc.reason)
    assert reasons
    assert all(isinstance(reason, RejectReason) for reason in reasons)
