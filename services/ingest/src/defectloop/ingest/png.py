"""PNG validation and bounded decoding.

Order of checks (each failure is one :class:`RejectReason`):

1. signature (``not_png``; a prefix of the signature is ``truncated``);
2. the IHDR chunk, read *before* anything is decompressed: width/height against the pixel caps
   (``pixel_bomb``), bit depth and colour type against the accepted modes (``unsupported_format``);
3. a walk over every chunk: lengths within the body, CRCs, ``IEND`` last (``truncated`` /
   ``undecodable``), compressed text/ICC chunks inflated with a cap (``pixel_bomb``);
4. the image data stream inflated with a cap of exactly the size the header promises: it must end
   and hold exactly that many bytes (``truncated`` / ``undecodable``);
5. only then the decode, whose result must match the header.

The decode gives what the model expects, 8-bit gray, from every accepted mode, by one rule that
the inference service applies too (both call ``cv2.imdecode(..., IMREAD_GRAYSCALE)``, libpng's
transforms, so the pixels ingest measures are the pixels the model sees):

- ``gray8``: as is;
- ``gray16`` (Mono12/Mono16 cameras): the high byte, ``v >> 8``. A PNG stores every sample at full
  16-bit scale (PNG spec §12.5; ``sBIT`` only records how many bits were significant), so a
  Mono12 frame must be sent scaled (``v << 4``); raw 12-bit values in a 16-bit PNG read as 1/16
  of the brightness and are refused as dark or uniform by the quality checks;
- ``rgb8`` / ``rgba8``: ITU-R BT.601 luma in libpng's 15-bit fixed point,
  ``(9797 R + 19234 G + 3737 B) >> 15`` (truncated; within one level of ``cv2.cvtColor``), a
  pixel with R = G = B keeping its value; alpha is dropped, not composited;
- ``rgb16`` / ``rgba16``: the same luma of the 16-bit samples, rounded (``+ 16384``), then its
  high byte.

The mode the camera sent is recorded in ``image.captured.source_mode``; the stored blob keeps the
original bytes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from defectloop.common.errors import InvalidInputError
from defectloop.common.events import RejectReason

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: What cameras send (8/16-bit gray, RGB, RGBA); palette, gray+alpha and sub-byte gray stay
#: refused unless configured (no camera in the field sends them; fewer decoder paths exposed).
DEFAULT_MODES = ("gray8", "gray16", "rgb8", "rgba8", "rgb16", "rgba16")

_KINDS = {0: "gray", 2: "rgb", 3: "palette", 4: "graya", 6: "rgba"}
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_VALID_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
# Adam7 passes: (x start, y start, x step, y step).
_ADAM7: tuple[tuple[int, int, int, int], ...] = (
    (0, 0, 8, 8),
    (4, 0, 8, 8),
    (0, 4, 4, 8),
    (2, 0, 4, 4),
    (0, 2, 2, 4),
    (1, 0, 2, 2),
    (0, 1, 1, 2),
)


class PngRejectedError(InvalidInputError):
    """The body is not an acceptable PNG: one reason, and a sentence for people."""

    reason: RejectReason

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.detail = detail


@dataclass(frozen=True)
class PngLimits:
    max_pixels: int = 5_242_880  # 5 MiP: 2592x1944 and 2448x2048 sensors fit
    max_side: int = 8192
    accepted_modes: frozenset[str] = frozenset(DEFAULT_MODES)
    max_text_chunk_bytes: int = 1024 * 1024
    max_chunks: int = 100_000


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    bit_depth: int
    color_type: int
    interlace: int

    @property
    def mode(self) -> str:
        """``gray8``, ``rgb16``, ``palette8``... (see ``settings.KNOWN_MODES``)."""
        return f"{_KINDS[self.color_type]}{self.bit_depth}"

    def raw_data_size(self) -> int:
        """Bytes of the decompressed image data stream (filter bytes included)."""
        bits_per_pixel = self.bit_depth * _CHANNELS[self.color_type]

        def size(width: int, height: int) -> int:
            if width == 0 or height == 0:
                return 0
            return height * (1 + (width * bits_per_pixel + 7) // 8)

        if self.interlace == 0:
            return size(self.width, self.height)
        total = 0
        for x0, y0, dx, dy in _ADAM7:
            total += size((self.width - x0 + dx - 1) // dx, (self.height - y0 + dy - 1) // dy)
        return total


@dataclass(frozen=True)
class DecodedPng:
    header: PngHeader
    pixels: np.ndarray
    """``HxW`` uint8 gray, converted from ``header.mode`` by the module's rule."""


def _chunks(data: bytes, max_chunks: int) -> Iterator[tuple[bytes, bytes, int]]:
    """``(type, payload, end offset)`` of every chunk after the signature, CRC-checked."""
    pos = len(PNG_SIGNATURE)
    count = 0
    while pos < len(data):
        count += 1
        if count > max_chunks:
            raise PngRejectedError(RejectReason.UNDECODABLE, f"more than {max_chunks} chunks")
        if pos + 8 > len(data):
            raise PngRejectedError(RejectReason.TRUNCATED, f"chunk header cut at byte {len(data)}")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF:
            raise PngRejectedError(RejectReason.UNDECODABLE, f"chunk length {length} out of range")
        end = pos + 8 + length + 4
        if end > len(data):
            raise PngRejectedError(
                RejectReason.TRUNCATED,
                f"{ctype!r} chunk needs {end - pos} bytes, {len(data) - pos} left",
            )
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(ctype + payload) != crc:
            raise PngRejectedError(RejectReason.UNDECODABLE, f"bad CRC in {ctype!r} chunk")
        yield ctype, payload, end
        pos = end


def read_header(data: bytes, limits: PngLimits) -> PngHeader:
    """Signature and IHDR, checked against the limits; nothing is decompressed."""
    if not data:
        raise PngRejectedError(RejectReason.EMPTY, "the body is empty")
    head = data[: len(PNG_SIGNATURE)]
    if head != PNG_SIGNATURE:
        if len(data) < len(PNG_SIGNATURE) and PNG_SIGNATURE.startswith(data):
            raise PngRejectedError(RejectReason.TRUNCATED, "the body ends inside the PNG signature")
        raise PngRejectedError(RejectReason.NOT_PNG, "the body does not start with a PNG signature")
    ihdr_end = len(PNG_SIGNATURE) + 8 + 13 + 4
    if len(data) < ihdr_end:
        raise PngRejectedError(RejectReason.TRUNCATED, "the body ends inside the IHDR chunk")
    length, ctype = struct.unpack(">I4s", data[len(PNG_SIGNATURE) : len(PNG_SIGNATURE) + 8])
    if ctype != b"IHDR" or length != 13:
        raise PngRejectedError(RejectReason.UNDECODABLE, "the first chunk is not a 13-byte IHDR")
    payload = data[ihdr_end - 17 : ihdr_end - 4]
    if zlib.crc32(ctype + payload) != struct.unpack(">I", data[ihdr_end - 4 : ihdr_end])[0]:
        raise PngRejectedError(RejectReason.UNDECODABLE, "bad CRC in the IHDR chunk")
    width, height, depth, color, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", payload
    )
    if width == 0 or height == 0 or width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise PngRejectedError(RejectReason.UNDECODABLE, f"invalid dimensions {width}x{height}")
    if color not in _VALID_DEPTHS or depth not in _VALID_DEPTHS[color]:
        raise PngRejectedError(
            RejectReason.UNDECODABLE, f"invalid bit depth {depth} for colour type {color}"
        )
    if compression != 0 or filtering != 0 or interlace not in (0, 1):
        raise PngRejectedError(RejectReason.UNDECODABLE, "unknown compression, filter or interlace")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise PngRejectedError(
            RejectReason.PIXEL_BOMB,
            f"{width}x{height} exceeds the limits ({limits.max_pixels} pixels, "
            f"{limits.max_side} per side)",
        )
    header = PngHeader(width, height, depth, color, interlace)
    if header.mode not in limits.accepted_modes:
        raise PngRejectedError(
            RejectReason.UNSUPPORTED_FORMAT,
            f"pixel format {header.mode} is not accepted (accepted: "
            f"{', '.join(sorted(limits.accepted_modes))})",
        )
    return header


def _inflate_capped(stream: bytes, cap: int) -> tuple[int, bool]:
    """Inflate ``stream`` producing at most ``cap + 1`` bytes: (bytes out, stream ended)."""
    inflater = zlib.decompressobj()
    produced = 0
    pending = stream
    while pending and not inflater.eof:
        out = inflater.decompress(pending, cap + 1 - produced)
        produced += len(out)
        if produced > cap:
            return produced, inflater.eof
        pending = inflater.unconsumed_tail
    return produced, inflater.eof


def _check_compressed_text(ctype: bytes, payload: bytes, limit: int) -> None:
    keyword_end = payload.find(b"\x00")
    if keyword_end < 0:
        raise PngRejectedError(RejectReason.UNDECODABLE, f"malformed {ctype!r} chunk")
    if ctype == b"iTXt":
        if payload[keyword_end + 1 : keyword_end + 2] != b"\x01":
            return  # uncompressed international text
        rest = payload[keyword_end + 3 :]
        lang_end = rest.find(b"\x00")
        translated_end = rest.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
        if translated_end < 0:
            raise PngRejectedError(RejectReason.UNDECODABLE, "malformed iTXt chunk")
        stream = rest[translated_end + 1 :]
    else:  # zTXt, iCCP: keyword, NUL, compression method, stream
        stream = payload[keyword_end + 2 :]
    try:
        produced, _ = _inflate_capped(stream, limit)
    except zlib.error as exc:
        raise PngRejectedError(RejectReason.UNDECODABLE, f"corrupt {ctype!r} chunk: {exc}") from exc
    if produced > limit:
        raise PngRejectedError(
            RejectReason.PIXEL_BOMB,
            f"{ctype.decode()} chunk inflates beyond {limit} bytes (decompression bomb)",
        )


def check_structure(data: bytes, header: PngHeader, limits: PngLimits) -> None:
    """Every chunk intact, IEND last, text bombs refused, image data complete and exact."""
    idat = bytearray()
    seen_iend = False
    for ctype, payload, end in _chunks(data, limits.max_chunks):
        if ctype == b"IDAT":
            idat += payload
        elif ctype == b"IEND":
            if end != len(data):
                raise PngRejectedError(RejectReason.UNDECODABLE, "data after the IEND chunk")
            seen_iend = True
        elif ctype in (b"zTXt", b"iTXt", b"iCCP"):
            _check_compressed_text(ctype, payload, limits.max_text_chunk_bytes)
        elif ctype not in _CRITICAL and not (ctype[0] & 0x20):
            raise PngRejectedError(RejectReason.UNDECODABLE, f"unknown critical chunk {ctype!r}")
    if not seen_iend:
        raise PngRejectedError(RejectReason.TRUNCATED, "the PNG ends before its IEND chunk")
    if not idat:
        raise PngRejectedError(RejectReason.UNDECODABLE, "the PNG holds no image data")
    expected = header.raw_data_size()
    try:
        produced, ended = _inflate_capped(bytes(idat), expected)
    except zlib.error as exc:
        raise PngRejectedError(RejectReason.UNDECODABLE, f"corrupt image data: {exc}") from exc
    if produced > expected:
        raise PngRejectedError(
            RejectReason.UNDECODABLE, "image data is larger than the header's dimensions"
        )
    if not ended:
        raise PngRejectedError(RejectReason.TRUNCATED, "the image data stream is cut short")
    if produced < expected:
        raise PngRejectedError(
            RejectReason.TRUNCATED, f"image data holds {produced} of {expected} bytes"
        )


def decode(data: bytes, limits: PngLimits) -> DecodedPng:
    """Validate ``data`` and decode it to 8-bit gray; raises :class:`PngRejectedError`."""
    header = read_header(data, limits)
    check_structure(data, header, limits)
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        # libpng converts row by row while decoding: no full-frame 16-bit or colour copy.
        pixels = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:
        raise PngRejectedError(RejectReason.UNDECODABLE, f"decoder error: {exc}") from exc
    if pixels is None or pixels.ndim != 2 or pixels.shape != (header.height, header.width):
        raise PngRejectedError(RejectReason.UNDECODABLE, "the decoder could not read the image")
    return DecodedPng(header=header, pixels=pixels)
