"""ONNX Runtime's own exception types never leave ``defectloop.vision.runtime`` untranslated."""

from __future__ import annotations

import numpy as np
import pytest

from defectloop.common.errors import DefectloopError, InvalidInputError
from defectloop.vision.manifest import load_verified
from defectloop.vision.runtime import Detector, onnxruntime_errors, open_session, run_graph

from .conftest import BundleFactory

pytestmark = pytest.mark.unit


def test_bytes_that_are_not_a_model_are_an_invalid_bundle() -> None:
    with pytest.raises(InvalidInputError) as caught:
        open_session(b"not an onnx model", providers="cpu")
    assert caught.value.reason == "bundle_invalid"
    assert type(caught.value.__cause__).__module__.startswith("onnxruntime")


def test_a_manifest_with_a_garbage_graph_is_an_invalid_bundle(
    make_bundle: BundleFactory,
) -> None:
    manifest, _ = load_verified(make_bundle())
    with pytest.raises(InvalidInputError) as caught:
        Detector.from_manifest(manifest, b"\x08\x07garbage", providers="cpu")
    assert caught.value.reason == "bundle_invalid"


def test_a_tensor_the_graph_refuses_is_invalid_input(make_bundle: BundleFactory) -> None:
    detector = Detector.from_bundle(make_bundle(), providers="cpu")
    wrong_rank = np.zeros((1, 64, 64), np.float32)
    with pytest.raises(InvalidInputError) as caught:
        detector.run(wrong_rank)
    assert caught.value.reason == "invalid_tensor"


def test_run_graph_gives_every_output_of_a_bundle(make_bundle: BundleFactory) -> None:
    _, model_bytes = load_verified(make_bundle())
    outputs = run_graph(model_bytes, np.zeros((2, 1, 64, 64), np.float32))
    assert {name: value.shape[0] for name, value in outputs.items()} == {
        "heatmap": 2,
        "size": 2,
        "offset": 2,
        "embedding": 2,
    }


def test_what_is_not_onnxruntimes_passes_through() -> None:
    with pytest.raises(ValueError, match="ours"), onnxruntime_errors("probe", loading=False):
        raise ValueError("ours")


def test_every_translation_is_a_project_error(make_bundle: BundleFactory) -> None:
    detector = Detector.from_bundle(make_bundle(), providers="cpu")
    for bad in (np.zeros((1, 1, 32, 64), np.float32), np.zeros((1, 1, 64, 64), np.float64)):
        with pytest.raises(DefectloopError):
            detector.run(bad)  # type: ignore[arg-type]
