"""Settings of the inference service (environment prefix ``DEFECTLOOP_INFERENCE_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from defectloop.common.settings import ServiceSettings


def _default_decode_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


class InferenceSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEFECTLOOP_INFERENCE_", extra="ignore", frozen=True
    )

    service_name: str = "inference"
    port: int = 8082

    group_id: str = Field(
        "inference",
        min_length=1,
        description="Consumer group on image.captured: processes sharing it split the partitions.",
    )
    max_batch: int = Field(16, ge=1, le=1024, description="Most images per micro-batch.")
    max_wait_ms: int = Field(
        10,
        ge=1,
        le=5000,
        description="How long a poll waits for a first image when none is buffered.",
    )
    decode_workers: int = Field(
        default_factory=_default_decode_workers,
        ge=1,
        le=256,
        description="Threads fetching and decoding PNGs (cv2 releases the GIL).",
    )
    inference_workers: int = Field(
        1,
        ge=1,
        le=16,
        description="Threads running ONNX Runtime sessions (each run uses intra_op_threads).",
    )
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        "auto", description="ONNX Runtime execution providers (auto = CUDA when present, else CPU)."
    )
    intra_op_threads: int | None = Field(
        None, ge=0, le=256, description="ORT intra-op threads; unset/0 = one per physical core."
    )
    inter_op_threads: int = Field(1, ge=1, le=64, description="ORT inter-op threads.")
    max_image_pixels: int = Field(
        50_000_000,
        ge=1,
        description="Images whose PNG header declares more pixels are refused (pixel bombs).",
    )
    max_blob_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Blobs larger than this are refused undecoded."
    )
    model_loaders: int = Field(2, ge=1, le=16, description="Threads loading model bundles.")
    verify_signatures: bool = Field(
        True,
        description="Refuse bundles without a valid signature by a trusted key (off: dev only).",
    )
    signing_public_key: Path | None = Field(
        None,
        description="PEM ed25519 public key bundles must be signed with; unset = the public key "
        "of the project key at its default place (defectloop.common.signing.default_key_path).",
    )
