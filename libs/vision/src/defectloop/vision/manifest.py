"""The model bundle: ``model.onnx`` + ``model.json`` (a :class:`BundleManifest`).

The manifest is the contract between the trainer (which writes bundles) and everything that runs
them (inference, evaluation, the monitor). See ``docs/model-bundle.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from defectloop.common.errors import IntegrityMismatchError, InvalidInputError, NotFoundError

SCHEMA_VERSION: Literal[1] = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.json"

INPUT_NAME = "image"
HEATMAP = "heatmap"
SIZE = "size"
OFFSET = "offset"
EMBEDDING = "embedding"
OUTPUT_NAMES: tuple[str, ...] = (HEATMAP, SIZE, OFFSET, EMBEDDING)
DYNAMIC_AXIS = "N"

_SHA256_PATTERN = r"^([0-9a-f]{64})?$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TensorSpec(_Frozen):
    """One graph input or output: name, element type and shape ("N" = dynamic batch axis)."""

    name: str = Field(description="Tensor name in the ONNX graph.")
    dtype: Literal["float32"] = Field(default="float32", description="Element type.")
    shape: list[int | str] = Field(description='Dimensions; "N" is the dynamic batch axis.')


class Preprocessing(_Frozen):
    """How an original uint8 grayscale image becomes the ``image`` input tensor."""

    input_size: tuple[int, int] = Field(description="(H, W) of the network input, in pixels.")
    mean: float = Field(default=0.5, description="Subtracted after scaling pixels to [0, 1].")
    std: float = Field(default=0.25, gt=0, description="Divides after subtracting the mean.")
    resize: Literal["area"] = Field(
        default="area", description="Whole image resized with cv2.INTER_AREA, no letterbox."
    )
    channels: Literal[1] = Field(default=1, description="Grayscale only.")

    @model_validator(mode="after")
    def _positive_size(self) -> Preprocessing:
        if min(self.input_size) <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        return self


class Decoding(_Frozen):
    """How the raw head outputs become boxes and an image-level decision."""

    stride: int = Field(default=4, gt=0, description="Input pixels per output cell.")
    score_threshold: float = Field(
        default=0.3, ge=0, le=1, description="Boxes with a score below this are dropped."
    )
    nms_iou: float = Field(default=0.5, gt=0, le=1, description="Class-wise NMS IoU threshold.")
    top_k: int = Field(default=50, gt=0, description="At most this many boxes per image.")
    decision_threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="An image is defective when its max score is >= this threshold.",
    )

    @model_validator(mode="after")
    def _decision_above_score(self) -> Decoding:
        if self.decision_threshold < self.score_threshold:
            raise ValueError(
                "decision_threshold must be >= score_threshold "
                "(a defective image must have at least one box)"
            )
        return self


class ReferenceStats(_Frozen):
    """Training-set embedding statistics for outlier scoring (see ``defectloop.vision.outlier``)."""

    method: Literal["mean_sq_z"] = Field(
        default="mean_sq_z", description="score = mean over dims of ((e - mean) / std)^2."
    )
    mean: list[float] = Field(description="Per-dimension mean of the training embeddings.")
    std: list[float] = Field(description="Per-dimension std (floored) of the training embeddings.")
    threshold: float = Field(description="Scores above this are flagged as outliers.")
    quantile: float = Field(default=0.99, description="Training-score quantile of the threshold.")
    n_samples: int = Field(ge=1, description="Number of training embeddings fitted.")

    @model_validator(mode="after")
    def _same_dims(self) -> ReferenceStats:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ValueError("mean and std must be non-empty and of the same length")
        return self


class Lineage(_Frozen):
    """Everything needed to reproduce the model (brief section 7)."""

    dataset_version: str = Field(
        description="Hash of the dataset manifest (images, labels, splits)."
    )
    git_commit: str = Field(description="Code version the model was trained with.")
    config: dict[str, Any] = Field(default_factory=dict, description="Resolved training config.")
    config_sha256: str = Field(description="sha256 of the canonical JSON of ``config``.")
    seed: int = Field(description="Training seed.")
    parent: str | None = Field(default=None, description="Version fine-tuned from, if any.")
    lockfile_sha256: str = Field(description="sha256 of uv.lock.")


class BundleManifest(_Frozen):
    """``model.json``: what the model is, how to feed it, how to decode it, where it came from."""

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, description="Manifest schema.")
    name: str = Field(description="Model name, e.g. 'centernet-gray'.")
    version: str = Field(description="Model version, unique within the registry.")
    created_at: datetime = Field(description="UTC creation time.")
    inputs: list[TensorSpec] = Field(description="Graph inputs (exactly one: 'image').")
    outputs: list[TensorSpec] = Field(
        description="Graph outputs: heatmap, size, offset, embedding."
    )
    preprocessing: Preprocessing
    labels: list[str] = Field(
        min_length=1, description="Class names; index = heatmap channel, COCO id = index + 1."
    )
    decoding: Decoding = Field(default_factory=Decoding)
    reference_stats: ReferenceStats | None = Field(
        default=None, description="Embedding statistics for outlier scoring, if fitted."
    )
    sha256: str = Field(
        default="",
        pattern=_SHA256_PATTERN,
        description="sha256 of model.onnx bytes ('' until write_bundle fills it in).",
    )
    lineage: Lineage
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation metrics.")

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        if [spec.name for spec in self.inputs] != [INPUT_NAME]:
            raise ValueError(f"inputs must be exactly ['{INPUT_NAME}']")
        missing = set(OUTPUT_NAMES) - {spec.name for spec in self.outputs}
        if missing:
            raise ValueError(f"outputs miss {sorted(missing)}")
        return self

    def category_id(self, label_index: int) -> int:
        """COCO category id of a heatmap channel."""
        return label_index + 1

    @property
    def embedding_dim(self) -> int | None:
        """D of the ``embedding`` output, when the manifest states it."""
        for spec in self.outputs:
            if spec.name == EMBEDDING and isinstance(spec.shape[-1], int):
                return spec.shape[-1]
        return None


def standard_io(
    input_size: tuple[int, int], num_classes: int, embedding_dim: int, stride: int = 4
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The ``inputs`` and ``outputs`` tensor specs the contract prescribes."""
    h, w = input_size
    if h % stride or w % stride:
        raise ValueError(f"input_size {input_size} must be divisible by stride {stride}")
    gh, gw = h // stride, w // stride
    n = DYNAMIC_AXIS
    inputs = [TensorSpec(name=INPUT_NAME, shape=[n, 1, h, w])]
    outputs = [
        TensorSpec(name=HEATMAP, shape=[n, num_classes, gh, gw]),
        TensorSpec(name=SIZE, shape=[n, 2, gh, gw]),
        TensorSpec(name=OFFSET, shape=[n, 2, gh, gw]),
        TensorSpec(name=EMBEDDING, shape=[n, embedding_dim]),
    ]
    return inputs, outputs


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bundle(
    bundle_dir: str | os.PathLike[str], onnx_bytes: bytes, manifest: BundleManifest
) -> BundleManifest:
    """Write ``model.onnx`` then ``model.json`` (each atomically); return the stored manifest.

    The manifest's ``sha256`` is (re)computed from ``onnx_bytes``. ``model.json`` is written last,
    so a reader never sees a manifest whose model file is still being written; a crash between
    the two files leaves a digest mismatch that :func:`verify_bundle` refuses.
    """
    directory = Path(bundle_dir)
    directory.mkdir(parents=True, exist_ok=True)
    stored = manifest.model_copy(update={"sha256": sha256_hex(onnx_bytes)})
    stored = BundleManifest.model_validate(stored.model_dump())  # re-validate the copy
    _atomic_write(directory / MODEL_FILE, onnx_bytes)
    _atomic_write(directory / MANIFEST_FILE, manifest_json(stored).encode())
    return stored


def manifest_json(manifest: BundleManifest) -> str:
    return json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=False) + "\n"


def load_manifest(bundle_dir: str | os.PathLike[str]) -> BundleManifest:
    """Read and validate ``model.json``; clear errors for a missing or malformed bundle."""
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.is_file():
        raise NotFoundError(
            f"no model bundle at {Path(bundle_dir)} ({MANIFEST_FILE} missing)",
            hint="pass a directory holding model.onnx and model.json",
        )
    try:
        return BundleManifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "<root>"
        raise InvalidInputError(
            f"invalid {path}: {where}: {first['msg']} ({exc.error_count()} error(s))",
            reason="bundle_invalid",
            hint="the manifest must match defectloop.vision.manifest.BundleManifest",
        ) from exc


def verify_bundle(bundle_dir: str | os.PathLike[str]) -> bytes:
    """Read ``model.onnx`` once, check its sha256 against the manifest, return the bytes.

    Callers load ONNX Runtime from the returned bytes, never from the path, so what runs is
    exactly what was verified.
    """
    return load_verified(bundle_dir)[1]


def load_verified(bundle_dir: str | os.PathLike[str]) -> tuple[BundleManifest, bytes]:
    """:func:`verify_bundle`, also returning the manifest the digest was checked against.

    Callers load ONNX Runtime from the returned bytes, never from the path, so what runs is
    exactly what was verified.
    """
    manifest = load_manifest(bundle_dir)
    model_path = Path(bundle_dir) / MODEL_FILE
    if not model_path.is_file():
        raise NotFoundError(
            f"no {MODEL_FILE} in {Path(bundle_dir)}",
            hint="a bundle is model.onnx + model.json in one directory",
        )
    data = model_path.read_bytes()
    if not manifest.sha256:
        raise IntegrityMismatchError(
            f"{Path(bundle_dir) / MANIFEST_FILE} records no sha256",
            hint="write bundles with defectloop.vision.manifest.write_bundle",
        )
    actual = sha256_hex(data)
    if actual != manifest.sha256:
        raise IntegrityMismatchError(
            f"{model_path} sha256 {actual[:12]}… does not match the manifest's "
            f"{manifest.sha256[:12]}…",
            hint="the model file is corrupted or was tampered with; re-fetch the bundle",
        )
    return manifest, data
