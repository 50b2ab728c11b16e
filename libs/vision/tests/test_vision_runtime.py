from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from defectloop.common.errors import IntegrityMismatchError, InvalidInputError
from defectloop.vision.manifest import MODEL_FILE
from defectloop.vision.outlier import fit_reference
from defectloop.vision.runtime import Detector, select_providers

from .conftest import BundleFactory

pytestmark = pytest.mark.unit


def gray(h: int, w: int, value: int = 128) -> np.ndarray:
    return np.full((h, w), value, np.uint8)


@pytest.mark.parametrize("n", [1, 8])
def test_predict_returns_the_encoded_boxes_for_each_image(
    make_bundle: BundleFactory, n: int
) -> None:
    detector = Detector.from_bundle(make_bundle(), providers="cpu")
    predictions = detector.predict([gray(64, 64)] * n)
    assert len(predictions) == n
    for prediction in predictions:
        got = [(d.label, round(d.score, 3), d.x, d.y, d.w, d.h) for d in prediction.detections]
        assert [g[:2] for g in got] == [("scratch", 0.9), ("crack", 0.7)]
        np.testing.assert_allclose(
            [g[2:] for g in got], [[13.0, 19.0, 10.0, 6.0], [41.5, 34.25, 8.0, 12.0]], atol=1e-3
        )
        assert prediction.defective
        assert prediction.decision_threshold == 0.5


def test_predict_maps_boxes_back_to_each_original_size(make_bundle: BundleFactory) -> None:
    detector = Detector.from_bundle(make_bundle(), providers="cpu")
    small, wide = detector.predict([gray(64, 64), gray(32, 256)])
    np.testing.assert_allclose(small.detections[0].bbox, (13.0, 19.0, 10.0, 6.0), atol=1e-3)
    np.testing.assert_allclose(wide.detections[0].bbox, (52.0, 9.5, 40.0, 3.0), atol=1e-3)


def test_session_uses_explicit_threads_and_cpu_provider(make_bundle: BundleFactory) -> None:
    detector = Detector.from_bundle(make_bundle(), providers="cpu", intra_op_threads=2)
    assert detector.providers == ["CPUExecutionProvider"]
    options = detector.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_falls_back_to_cpu_without_gpu_providers() -> None:
    assert select_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert select_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_asking_for_cuda_without_it_is_a_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="CUDAExecutionProvider is not available"):
        select_providers("cuda", ["CPUExecutionProvider"])


def test_flipped_byte_in_model_raises_integrity_error(make_bundle: BundleFactory) -> None:
    bundle = make_bundle()
    data = bytearray((bundle / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(IntegrityMismatchError, match="does not match"):
        Detector.from_bundle(bundle, providers="cpu")


def test_outlier_flag_uses_the_bundle_reference_stats(make_bundle: BundleFactory) -> None:
    plain = Detector.from_bundle(make_bundle(), providers="cpu")
    rng = np.random.default_rng(0)
    images = [gray(64, 64, int(v)) for v in rng.integers(100, 140, size=32)]
    embeddings = np.stack([p.embedding for p in plain.predict(images, with_embedding=True)])
    detector = Detector.from_bundle(
        make_bundle(reference_stats=fit_reference(embeddings)), providers="cpu"
    )
    normal, bright = detector.predict([gray(64, 64, 120), gray(64, 64, 255)])
    assert (normal.outlier, bright.outlier) == (False, True)
    assert bright.outlier_score > normal.outlier_score


def test_without_reference_stats_no_outlier_score(make_bundle: BundleFactory) -> None:
    (prediction,) = Detector.from_bundle(make_bundle(), providers="cpu").predict([gray(64, 64)])
    assert (prediction.outlier_score, prediction.outlier, prediction.embedding) == (
        None,
        False,
        None,
    )


def test_non_gray_input_is_rejected_clearly(make_bundle: BundleFactory) -> None:
    detector = Detector.from_bundle(make_bundle(), providers="cpu")
    with pytest.raises(InvalidInputError, match="uint8"):
        detector.predict([np.zeros((64, 64), np.float32)])


def test_missing_bundle_is_not_found(tmp_path: Path) -> None:
    from defectloop.common.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no model bundle"):
        Detector.from_bundle(tmp_path / "nope", providers="cpu")
