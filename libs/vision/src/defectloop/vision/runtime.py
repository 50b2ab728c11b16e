"""The detector: a verified bundle in an ONNX Runtime session, preprocess → run → decode.

The only module of defectloop that imports onnxruntime (the trainer's export parity check and
hold-out evaluation go through :func:`open_session` / :func:`run_graph` too), so ONNX Runtime's
own (pybind) exception types are translated here once: :func:`onnxruntime_errors`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from defectloop.common.errors import (
    ConfigError,
    InvalidInputError,
    NotFoundError,
    TransientError,
)
from defectloop.vision.decode import DecodedImage, Detection, decode_batch
from defectloop.vision.manifest import (
    EMBEDDING,
    HEATMAP,
    INPUT_NAME,
    OFFSET,
    OUTPUT_NAMES,
    SIZE,
    BundleManifest,
    load_verified,
)
from defectloop.vision.outlier import outlier_scores
from defectloop.vision.preprocess import PreprocessedBatch, preprocess_batch

ProviderChoice = Literal["auto", "cpu", "cuda", "tensorrt"]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


@dataclass(frozen=True, slots=True)
class ImagePrediction:
    """What the detector says about one image (boxes in original-image pixels)."""

    detections: list[Detection]
    defective: bool
    max_score: float
    decision_threshold: float
    outlier_score: float | None
    """Mean squared z-score of the embedding; ``None`` when the bundle has no reference stats."""
    outlier: bool
    embedding: npt.NDArray[np.float32] | None = None


def select_providers(choice: ProviderChoice, available: Sequence[str] | None = None) -> list[str]:
    """ONNX Runtime providers for a choice, in priority order, CPU always last.

    ``auto`` = CUDA when this onnxruntime build has it, else CPU. TensorRT is used only when asked
    for (``tensorrt``): it builds an engine per new input shape, which stalls a micro-batching
    service whose batch size varies.
    """
    have = list(ort.get_available_providers() if available is None else available)
    wanted = {
        "cpu": [CPU],
        "cuda": [CUDA, CPU],
        "tensorrt": [TENSORRT, CUDA, CPU],
        "auto": [CUDA, CPU],
    }.get(choice)
    if wanted is None:
        raise InvalidInputError(
            f"unknown providers choice {choice!r}", hint="use one of auto, cpu, cuda, tensorrt"
        )
    if choice in ("cuda", "tensorrt") and wanted[0] not in have:
        raise InvalidInputError(
            f"{wanted[0]} is not available in this onnxruntime build (has: {', '.join(have)})",
            reason="provider_unavailable",
            hint="install onnxruntime-gpu with a matching CUDA, or use providers='auto'/'cpu'",
        )
    return [p for p in wanted if p in have] or [CPU]


def session_options(intra_op_threads: int | None, inter_op_threads: int) -> ort.SessionOptions:
    """Explicit threading, no spin-waiting (spinning burns CPU between micro-batches)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or 0  # 0 = one per physical core
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _ort_types(*names: str) -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    found = (getattr(state, name, None) for name in names)
    return tuple(t for t in found if isinstance(t, type) and issubclass(t, Exception))


@contextmanager
def onnxruntime_errors(what: str, *, loading: bool) -> Iterator[None]:
    """Translate ONNX Runtime's exceptions raised inside the block.

    Loading: a missing file -> ``NotFoundError``; a provider that fails to start -> ``ConfigError``;
    anything else (bad protobuf, invalid graph, unsupported op) -> ``InvalidInputError``
    ``bundle_invalid``: the bundle will never load. Running: a tensor the graph refuses ->
    ``InvalidInputError``; an engine or provider failure -> ``TransientError`` (memory pressure and
    device hiccups pass; the caller's retry decides when to give up).
    """
    no_file = _ort_types("NoSuchFile")
    provider = _ort_types("EPFail")
    bad_input = _ort_types("InvalidArgument")
    every = _ort_types(
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "EngineError",
        "RuntimeException",
        "InvalidProtobuf",
        "ModelLoaded",
        "NotImplemented",
        "InvalidGraph",
        "EPFail",
    )
    try:
        yield
    except every as exc:
        message = f"onnxruntime: {what}: {type(exc).__name__}: {exc}"[:1000]
        if loading and isinstance(exc, no_file):
            raise NotFoundError(message, reason="bundle_missing") from exc
        if isinstance(exc, provider):
            raise ConfigError(
                message, hint="check the onnxruntime build and its execution providers"
            ) from exc
        if loading:
            raise InvalidInputError(
                message,
                reason="bundle_invalid",
                hint="export the model as one self-contained ONNX file, opset >= 17",
            ) from exc
        if isinstance(exc, bad_input):
            raise InvalidInputError(message, reason="invalid_tensor") from exc
        raise TransientError(message, reason="inference_failed") from exc


def open_session(
    model_bytes: bytes,
    *,
    providers: ProviderChoice = "auto",
    intra_op_threads: int | None = None,
    inter_op_threads: int = 1,
    source: str = "model",
) -> ort.InferenceSession:
    """An ONNX Runtime session on ``model_bytes``; failures come out translated."""
    with onnxruntime_errors(f"cannot load {source}", loading=True):
        return ort.InferenceSession(
            model_bytes,
            sess_options=session_options(intra_op_threads, inter_op_threads),
            providers=select_providers(providers),
        )


def run_graph(
    model_bytes: bytes, batch: npt.NDArray[np.float32], *, intra_op_threads: int = 1
) -> dict[str, npt.NDArray[np.float32]]:
    """The raw outputs of a bundle graph on a preprocessed batch, on CPU (export parity checks)."""
    session = open_session(model_bytes, providers="cpu", intra_op_threads=intra_op_threads)
    with onnxruntime_errors("run", loading=False):
        values = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
    return {name: np.asarray(v) for name, v in zip(OUTPUT_NAMES, values, strict=True)}


class Detector:
    """A loaded, verified model bundle. Thread-safe for concurrent :meth:`predict` calls."""

    def __init__(self, manifest: BundleManifest, session: ort.InferenceSession) -> None:
        self.manifest = manifest
        self.session = session
        self._check_graph()

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | os.PathLike[str],
        providers: ProviderChoice = "auto",
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
    ) -> Detector:
        """Verify the bundle's sha256, then build the session from the verified bytes."""
        manifest, model_bytes = load_verified(bundle_dir)
        return cls.from_manifest(
            manifest,
            model_bytes,
            providers=providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            source=str(bundle_dir),
        )

    @classmethod
    def from_manifest(
        cls,
        manifest: BundleManifest,
        model_bytes: bytes,
        providers: ProviderChoice = "auto",
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        source: str = "model",
    ) -> Detector:
        """A detector on bytes already verified against ``manifest`` (e.g. just exported)."""
        session = open_session(
            model_bytes,
            providers=providers,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            source=source,
        )
        return cls(manifest, session)

    @property
    def providers(self) -> list[str]:
        """Providers the session actually uses."""
        return list(self.session.get_providers())

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if set(inputs) != {INPUT_NAME} or not set(OUTPUT_NAMES) <= outputs:
            raise InvalidInputError(
                f"graph inputs {sorted(inputs)} / outputs {sorted(outputs)} do not follow the "
                f"bundle contract (input '{INPUT_NAME}', outputs {list(OUTPUT_NAMES)})",
                reason="bundle_invalid",
                hint="see docs/model-bundle.md",
            )
        shape = inputs[INPUT_NAME].shape
        expected = [1, *self.manifest.preprocessing.input_size]
        if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != expected:
            raise InvalidInputError(
                f"graph input shape {shape} does not match preprocessing [N, {expected}]",
                reason="bundle_invalid",
                hint="H and W of the graph must be fixed to preprocessing.input_size",
            )

    def run(self, tensor: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[np.float32]]:
        """Run the raw graph on a preprocessed ``[N, 1, H, W]`` tensor."""
        with onnxruntime_errors("run", loading=False):
            values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: tensor})
        return {
            name: np.asarray(v, dtype=np.float32)
            for name, v in zip(OUTPUT_NAMES, values, strict=True)
        }

    def preprocess(self, images: Sequence[npt.NDArray[np.generic]]) -> PreprocessedBatch:
        return preprocess_batch(images, self.manifest.preprocessing)

    def predict_batch(
        self,
        batch: PreprocessedBatch,
        *,
        with_embedding: bool = False,
        score_threshold: float | None = None,
    ) -> list[ImagePrediction]:
        """Run + decode a pre-formed batch (what a benchmark of raw throughput times)."""
        raw = self.run(batch.tensor)
        decoded = decode_batch(
            raw[HEATMAP],
            raw[SIZE],
            raw[OFFSET],
            labels=self.manifest.labels,
            decoding=self.manifest.decoding,
            scales=batch.scales,
            image_sizes=batch.sizes,
            score_threshold=score_threshold,
        )
        embeddings = raw[EMBEDDING]
        ref = self.manifest.reference_stats
        scores = outlier_scores(embeddings, ref) if ref is not None else None
        return [
            self._prediction(
                d,
                None if scores is None else float(scores[i]),
                embeddings[i].copy() if with_embedding else None,
            )
            for i, d in enumerate(decoded)
        ]

    def _prediction(
        self, decoded: DecodedImage, score: float | None, embedding: npt.NDArray[np.float32] | None
    ) -> ImagePrediction:
        ref = self.manifest.reference_stats
        return ImagePrediction(
            detections=decoded.detections,
            defective=decoded.defective,
            max_score=decoded.max_score,
            decision_threshold=self.manifest.decoding.decision_threshold,
            outlier_score=score,
            outlier=bool(ref is not None and score is not None and score > ref.threshold),
            embedding=embedding,
        )

    def predict(
        self,
        images: Sequence[npt.NDArray[np.generic]],
        *,
        with_embedding: bool = False,
        score_threshold: float | None = None,
    ) -> list[ImagePrediction]:
        """Predict uint8 grayscale images of any sizes (one ONNX run for the whole sequence)."""
        if len(images) == 0:
            return []
        return self.predict_batch(
            self.preprocess(images), with_embedding=with_embedding, score_threshold=score_threshold
        )
