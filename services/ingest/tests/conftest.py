"""PNG builders and the malformed-input corpus shared by the ingest tests.

Valid frames are encoded with OpenCV; bombs, 16-bit, colour and broken files are crafted chunk by
chunk. ``pytest_generate_tests`` hands the corpus to tests that ask for ``bad_png``.
"""

from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

SIGNATURE = b"\x89PNG\r\n\x1a\n"
ADAM7 = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


def textured_frame(seed: int, height: int = 96, width: int = 128) -> np.ndarray:
    """A grayscale frame with texture (not uniform, sharp): a gradient plus seeded noise."""
    rng = np.random.default_rng(seed)
    gradient = np.linspace(40, 200, width, dtype=np.float64)[None, :].repeat(height, axis=0)
    noise = rng.normal(0, 18, size=(height, width))
    return np.clip(gradient + noise, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def valid_png(seed: int = 0, height: int = 96, width: int = 128) -> bytes:
    return encode(textured_frame(seed, height, width))


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + ctype
        + payload
        + struct.pack(">I", zlib.crc32(ctype + payload))
    )


def ihdr(width: int, height: int, depth: int = 8, color: int = 0, interlace: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, interlace))


def craft(
    width: int,
    height: int,
    *,
    depth: int = 8,
    color: int = 0,
    raw: bytes | None = None,
    interlace: int = 0,
    before_idat: bytes = b"",
    after_iend: bytes = b"",
    idat: bytes | None = None,
) -> bytes:
    """A PNG from its parts; ``raw`` = filtered scanlines (default: zeros of the right size)."""
    if idat is None:
        if raw is None:
            channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
            raw = bytes(height * (1 + (width * depth * channels + 7) // 8))
        idat = zlib.compress(raw, 9)
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if color == 3 else b""
    return (
        SIGNATURE
        + ihdr(width, height, depth, color, interlace)
        + palette
        + before_idat
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
        + after_iend
    )


def interlaced(pixels: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit grayscale PNG of ``pixels`` (filter type 0 everywhere)."""
    height, width = pixels.shape
    raw = bytearray()
    for x0, y0, dx, dy in ADAM7:
        sub = pixels[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub:
            raw += b"\x00" + row.tobytes()
    return craft(width, height, raw=bytes(raw), interlace=1)


def text_bomb(ctype: bytes) -> bytes:
    """A valid small frame carrying a compressed chunk that inflates to 16 MiB of zeros."""
    bomb = zlib.compress(bytes(16 * 1024 * 1024), 9)
    if ctype == b"iTXt":
        payload = b"Comment\x00\x01\x00en\x00\x00" + bomb
    else:
        payload = b"Comment\x00\x00" + bomb
    base = valid_png(7)
    return base[:33] + chunk(ctype, payload) + base[33:]


def jpeg_body() -> bytes:
    ok, buf = cv2.imencode(".jpg", textured_frame(3))
    assert ok
    return buf.tobytes()


def with_bad_idat_crc(data: bytes) -> bytes:
    pos = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[pos - 4 : pos])
    crc_at = pos + 4 + length
    return data[:crc_at] + bytes([data[crc_at] ^ 0xFF]) + data[crc_at + 1 :]


@dataclass(frozen=True)
class BadPng:
    """A body that ingest must refuse with ``status`` and ``reason``."""

    name: str
    body: bytes
    status: int
    reason: str


def bad_pngs() -> list[BadPng]:
    """Bodies that are wrong in themselves (sent with the right token and Content-Type)."""
    good = valid_png(1)
    idat_at = good.index(b"IDAT")
    cases = [
        BadPng("empty", b"", 422, "empty"),
        BadPng("signature_prefix", good[:4], 422, "truncated"),
        BadPng("cut_in_ihdr", good[:20], 422, "truncated"),
        BadPng("cut_after_ihdr", good[:33], 422, "truncated"),
        BadPng("cut_in_idat_header", good[: idat_at + 2], 422, "truncated"),
        BadPng("cut_in_idat", good[: idat_at + 40], 422, "truncated"),
        BadPng("cut_at_half", good[: len(good) // 2], 422, "truncated"),
        BadPng("cut_before_iend", good[:-12], 422, "truncated"),
        BadPng("cut_in_iend_crc", good[:-1], 422, "truncated"),
        BadPng(
            "bomb_60000_square", craft(60000, 60000, idat=zlib.compress(b"")), 422, "pixel_bomb"
        ),
        BadPng("bomb_side_9000", craft(9000, 10, idat=zlib.compress(b"")), 422, "pixel_bomb"),
        BadPng("bomb_9_megapixels", craft(3000, 3000, idat=zlib.compress(b"")), 422, "pixel_bomb"),
        BadPng("bomb_zero_data_4k", craft(8192, 8192, idat=b""), 422, "pixel_bomb"),
        BadPng("bomb_ztxt", text_bomb(b"zTXt"), 422, "pixel_bomb"),
        BadPng("bomb_itxt", text_bomb(b"iTXt"), 422, "pixel_bomb"),
        BadPng("bomb_iccp", text_bomb(b"iCCP"), 422, "pixel_bomb"),
        BadPng("jpeg_body", jpeg_body(), 415, "not_png"),
        BadPng("text_body", b"hello, I am not an image", 415, "not_png"),
        # 16-bit gray, RGB and RGBA are accepted by default (converted to gray8): a flat one is
        # refused for its content, after the conversion.
        BadPng("gray16_flat", craft(64, 48, depth=16), 422, "uniform_frame"),
        BadPng("rgb8_flat", craft(64, 48, color=2), 422, "uniform_frame"),
        BadPng("palette8", craft(64, 48, color=3), 422, "unsupported_format"),
        BadPng("rgba8_flat", craft(64, 48, color=6), 422, "uniform_frame"),
        BadPng("gray_alpha8", craft(64, 48, color=4), 422, "unsupported_format"),
        BadPng("gray1", craft(64, 48, depth=1), 422, "unsupported_format"),
        BadPng("bad_idat_crc", with_bad_idat_crc(good), 422, "undecodable"),
        BadPng(
            "corrupt_zlib", craft(64, 48, idat=b"\x78\x9c" + bytes(range(200))), 422, "undecodable"
        ),
        BadPng("short_image_data", craft(64, 48, raw=bytes(100)), 422, "truncated"),
        BadPng("long_image_data", craft(64, 48, raw=bytes(49 * 65 + 500)), 422, "undecodable"),
        BadPng("trailing_garbage", good + b"PK\x03\x04zipzipzip", 422, "undecodable"),
        BadPng("no_ihdr_first", SIGNATURE + chunk(b"IEND", b"") + good[8:], 422, "undecodable"),
        BadPng("invalid_depth", craft(64, 48, depth=3), 422, "undecodable"),
        BadPng("zero_width", craft(0, 48), 422, "undecodable"),
        BadPng(
            "unknown_critical_chunk",
            craft(64, 48, before_idat=chunk(b"ABCD", b"x")),
            422,
            "undecodable",
        ),
        BadPng("no_idat", SIGNATURE + ihdr(64, 48) + chunk(b"IEND", b""), 422, "undecodable"),
        BadPng("uniform_frame", encode(np.full((96, 128), 128, np.uint8)), 422, "uniform_frame"),
        BadPng("black_frame", encode(np.zeros((96, 128), np.uint8)), 422, "uniform_frame"),
    ]
    return cases


def mutants(seed: int, n: int) -> list[bytes]:
    """Seeded random mutations of a valid PNG: byte flips, splices, truncations."""
    rng = random.Random(seed)
    base = valid_png(11)
    out: list[bytes] = []
    for _ in range(n):
        data = bytearray(base)
        kind = rng.choice(("flip", "splice", "truncate_flip"))
        if kind == "splice":
            at = rng.randrange(8, len(data))
            data[at:at] = rng.randbytes(rng.randrange(1, 64))
        else:
            for _ in range(rng.randrange(1, 8)):
                at = rng.randrange(len(data))
                data[at] ^= 1 << rng.randrange(8)
            if kind == "truncate_flip":
                del data[rng.randrange(len(data) // 2, len(data)) :]
        out.append(bytes(data))
    return out


@pytest.fixture
def pngs() -> type[_Kit]:
    return _Kit


class _Kit:
    """Builders, for tests (conftest helpers cannot be imported under importlib mode)."""

    valid = staticmethod(valid_png)
    encode = staticmethod(encode)
    frame = staticmethod(textured_frame)
    craft = staticmethod(craft)
    interlaced = staticmethod(interlaced)
    bad = staticmethod(bad_pngs)
    mutants = staticmethod(mutants)
    jpeg = staticmethod(jpeg_body)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bad_png" in metafunc.fixturenames:
        cases = [c for c in bad_pngs() if c.reason != "uniform_frame"]  # quality: not PNG-level
        metafunc.parametrize("bad_png", cases, ids=[c.name for c in cases])
