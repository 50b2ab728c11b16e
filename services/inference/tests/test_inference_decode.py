"""PNG fetch + decode: every failure maps to exactly one DLQ reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.errors import PermanentError
from defectloop.inference.decode import decode_png_gray, load_image, png_size

pytestmark = pytest.mark.unit

LIMITS = {"max_pixels": 10_000_000, "max_bytes": 10_000_000}


def _png(array: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return bytes(buf)


def _reason(exc: pytest.ExceptionInfo[PermanentError]) -> str:
    return exc.value.reason


def test_inference_decodes_a_gray_png_to_uint8_hw(make_image, store: LocalBlobStore) -> None:
    event = make_image("s", width=40, height=30)
    image = load_image(event, store, **LIMITS)
    assert image.dtype == np.uint8
    assert image.shape == (30, 40)


def test_inference_converts_rgb_to_gray() -> None:
    image = decode_png_gray(_png(np.zeros((5, 7, 3), np.uint8)), max_pixels=100)
    assert image.shape == (5, 7)


def test_inference_reads_png_size_from_the_header() -> None:
    assert png_size(_png(np.zeros((5, 7), np.uint8))) == (7, 5)


def test_inference_refuses_a_pixel_bomb_before_decoding() -> None:
    with pytest.raises(PermanentError) as exc:
        decode_png_gray(_png(np.zeros((100, 100), np.uint8)), max_pixels=9_999)
    assert _reason(exc) == "pixel_bomb"


def test_inference_maps_non_png_bytes_to_undecodable() -> None:
    with pytest.raises(PermanentError) as exc:
        decode_png_gray(b"GIF89a not a png at all, clearly", max_pixels=100)
    assert _reason(exc) == "undecodable"


def test_inference_maps_a_truncated_png_to_undecodable() -> None:
    data = _png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    with pytest.raises(PermanentError) as exc:
        decode_png_gray(data[: len(data) // 2], max_pixels=10_000)
    assert _reason(exc) == "undecodable"


def test_inference_maps_a_missing_blob_to_missing_blob(make_image, store: LocalBlobStore) -> None:
    event = make_image("s", store_blob=False)
    with pytest.raises(PermanentError) as exc:
        load_image(event, store, **LIMITS)
    assert _reason(exc) == "missing_blob"


def test_inference_maps_altered_blob_bytes_to_blob_corrupt(
    make_image, store: LocalBlobStore
) -> None:
    event = make_image("s")
    path = store.root / event.sha256[:2] / event.sha256[2:4] / f"{event.sha256}.png"
    path.write_bytes(path.read_bytes() + b"x")
    with pytest.raises(PermanentError) as exc:
        load_image(event, store, **LIMITS)
    assert _reason(exc) == "blob_corrupt"


def test_inference_maps_an_event_digest_other_than_the_blob_to_blob_corrupt(
    make_image, store: LocalBlobStore
) -> None:
    event = make_image("s").model_copy(update={"sha256": "f" * 64})
    with pytest.raises(PermanentError) as exc:
        load_image(event, store, **LIMITS)
    assert _reason(exc) == "blob_corrupt"


def test_inference_maps_wrong_event_dimensions_to_size_mismatch(
    make_image, store: LocalBlobStore
) -> None:
    event = make_image("s", width=64, height=48).model_copy(update={"width": 65})
    with pytest.raises(PermanentError) as exc:
        load_image(event, store, **LIMITS)
    assert _reason(exc) == "size_mismatch"


def test_inference_maps_undecodable_stored_bytes_to_undecodable(
    make_image, store: LocalBlobStore
) -> None:
    event = make_image("s", data=b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(PermanentError) as exc:
        load_image(event, store, **LIMITS)
    assert _reason(exc) == "undecodable"
