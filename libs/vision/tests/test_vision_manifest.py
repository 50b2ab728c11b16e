from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectloop.common.errors import IntegrityMismatchError, InvalidInputError
from defectloop.testing.bundles import tiny_manifest as make_manifest
from defectloop.vision.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    BundleManifest,
    Decoding,
    load_manifest,
    sha256_hex,
    verify_bundle,
    write_bundle,
)
from defectloop.vision.outlier import fit_reference

pytestmark = pytest.mark.unit


def test_manifest_json_round_trip_is_lossless() -> None:
    manifest = make_manifest((64, 96), reference_stats=fit_reference([[0.0, 1.0], [2.0, 3.0]]))
    again = BundleManifest.model_validate_json(manifest.model_dump_json())
    assert again == manifest


def test_write_bundle_records_sha256_and_verify_returns_the_bytes(tmp_path: Path) -> None:
    stored = write_bundle(tmp_path / "b", b"onnx-bytes", make_manifest((64, 64)))
    assert stored.sha256 == sha256_hex(b"onnx-bytes")
    assert load_manifest(tmp_path / "b") == stored
    assert verify_bundle(tmp_path / "b") == b"onnx-bytes"
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [MANIFEST_FILE, MODEL_FILE]


def test_verify_refuses_a_modified_model(tmp_path: Path) -> None:
    write_bundle(tmp_path, b"onnx-bytes", make_manifest((64, 64)))
    (tmp_path / MODEL_FILE).write_bytes(b"onnx-bytez")
    with pytest.raises(IntegrityMismatchError):
        verify_bundle(tmp_path)


def test_verify_refuses_a_manifest_without_digest(tmp_path: Path) -> None:
    (tmp_path / MODEL_FILE).write_bytes(b"x")
    (tmp_path / MANIFEST_FILE).write_text(make_manifest((64, 64)).model_dump_json())
    with pytest.raises(IntegrityMismatchError, match="records no sha256"):
        verify_bundle(tmp_path)


def test_malformed_manifest_is_a_clear_invalid_input(tmp_path: Path) -> None:
    data = json.loads(make_manifest((64, 64)).model_dump_json())
    data["labels"] = []
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="labels"):
        load_manifest(tmp_path)


def test_decision_threshold_below_score_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="decision_threshold"):
        Decoding(score_threshold=0.5, decision_threshold=0.4)


def test_manifest_is_frozen() -> None:
    manifest = make_manifest((64, 64))
    with pytest.raises(ValueError, match="frozen"):
        manifest.version = "v2"  # type: ignore[misc]
