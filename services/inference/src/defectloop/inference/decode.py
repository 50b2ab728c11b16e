"""PNG bytes from the blob store → uint8 grayscale array, with failures mapped to DLQ reasons.

Runs in the decode thread pool (``cv2.imdecode`` releases the GIL). Every failure is a
:class:`PermanentError` with exactly one reason:

- ``missing_blob``: the blob store has no such blob (or the URI points outside it);
- ``blob_corrupt``: the bytes do not match their digest (the URI's, or the event's ``sha256``);
- ``image_too_large``: the blob is bigger than ``max_blob_bytes``;
- ``pixel_bomb``: the PNG header declares more than ``max_pixels`` pixels (checked before decode);
- ``undecodable``: not a PNG, truncated, or OpenCV cannot decode it;
- ``size_mismatch``: the decoded image is not ``width`` x ``height`` as the event says.

An unreadable blob store (I/O error, S3 down) is a :class:`TransientError`: the batch is retried,
never dead-lettered.
"""

from __future__ import annotations

import struct
from pathlib import PurePosixPath
from urllib.parse import urlparse

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.common.blobstore import BlobStore
from defectloop.common.errors import DefectloopError, PermanentError, TransientError
from defectloop.common.events import ImageCaptured

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

GrayImage = npt.NDArray[np.uint8]


class ImageError(PermanentError):
    """An image that can never be predicted (the reason says why)."""

    reason = "undecodable"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the PNG IHDR chunk, without decoding anything."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ImageError("not a PNG (bad signature or IHDR)", reason="undecodable")
    width, height = struct.unpack(">II", data[16:24])
    if width == 0 or height == 0:
        raise ImageError(f"PNG declares an empty image {width}x{height}", reason="undecodable")
    return int(width), int(height)


def decode_png_gray(data: bytes, *, max_pixels: int) -> GrayImage:
    """Decode PNG bytes to ``HxW`` uint8 grayscale (RGB is converted, 16-bit scaled down)."""
    width, height = png_size(data)
    if width * height > max_pixels:
        raise ImageError(
            f"PNG declares {width}x{height} = {width * height} pixels (limit {max_pixels})",
            reason="pixel_bomb",
        )
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as exc:
        raise ImageError(f"OpenCV cannot decode the PNG: {exc}", reason="undecodable") from exc
    if image is None or image.ndim != 2 or image.size == 0:
        raise ImageError(
            "OpenCV cannot decode the PNG (truncated or corrupt)", reason="undecodable"
        )
    gray: GrayImage = np.ascontiguousarray(image, dtype=np.uint8)
    return gray


def _digest_in_uri(uri: str) -> str:
    return PurePosixPath(urlparse(uri).path).name.split(".", 1)[0]


def fetch_png(event: ImageCaptured, store: BlobStore, *, max_bytes: int) -> bytes:
    """The event's PNG bytes, verified against its ``sha256``."""
    if _digest_in_uri(event.blob_uri) != event.sha256:
        raise ImageError(
            f"blob URI {event.blob_uri} does not name the event's sha256 {event.sha256[:12]}…",
            reason="blob_corrupt",
        )
    try:
        data = store.get(event.blob_uri)  # verifies the bytes against the digest in the URI
    except DefectloopError:
        raise
    except OSError as exc:  # the store is there but unreadable now: retry, never drop
        raise TransientError(f"blob store read failed for {event.blob_uri}: {exc}") from exc
    if len(data) > max_bytes:
        raise ImageError(f"blob is {len(data)} bytes (limit {max_bytes})", reason="image_too_large")
    return data


def load_image(
    event: ImageCaptured, store: BlobStore, *, max_pixels: int, max_bytes: int
) -> GrayImage:
    """Fetch, verify and decode the image of ``event`` (call it in a worker thread)."""
    image = decode_png_gray(fetch_png(event, store, max_bytes=max_bytes), max_pixels=max_pixels)
    height, width = image.shape
    if (width, height) != (event.width, event.height):
        raise ImageError(
            f"decoded image is {width}x{height}, the event says {event.width}x{event.height}",
            reason="size_mismatch",
        )
    return image
