"""A parent checkpoint is hashed when its version is registered and verified before fine-tuning."""

from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.common.errors import IntegrityMismatchError
from defectloop.testing.bundles import BundleBuilder, TinyBundle
from defectloop.trainer.checkpoints import (
    CHECKPOINT_FILE,
    CheckpointDigest,
    expected_parent_digest,
    file_sha256,
    read_verified,
)
from defectloop.trainer.deploy import register_bundle
from defectloop.trainer.pipeline import train_and_register
from defectloop.trainer.registry import Registry

pytestmark = pytest.mark.unit


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'trainer.db'}")


@pytest.fixture
def parent(tmp_path: Path) -> TinyBundle:
    bundle = BundleBuilder(tmp_path)("parent-v1")
    (bundle.path / CHECKPOINT_FILE).write_bytes(b"weights of the parent " * 100)
    return bundle


def _digest(registry: Registry, version: str) -> CheckpointDigest | None:
    with registry.session() as s:
        return s.get(CheckpointDigest, version)


def test_registration_records_the_checkpoint_digest(registry: Registry, parent: TinyBundle) -> None:
    register_bundle(registry, parent.path, site="A", author="alice")
    row = _digest(registry, parent.version)
    assert row is not None
    assert (row.sha256, row.source) == (file_sha256(parent.path / CHECKPOINT_FILE), "registration")
    assert expected_parent_digest(registry, parent.path) == row.sha256
    assert read_verified(parent.path / CHECKPOINT_FILE, row.sha256).startswith(b"weights")


def test_a_tampered_parent_is_refused_before_any_training(
    registry: Registry, parent: TinyBundle, coco_dir: Path, tmp_path: Path
) -> None:
    register_bundle(registry, parent.path, site="A", author="alice")
    (parent.path / CHECKPOINT_FILE).write_bytes(b"someone else's weights " * 100)
    with pytest.raises(IntegrityMismatchError, match="does not match the registered") as info:
        train_and_register(
            [coco_dir],
            preset="tiny",
            seed=0,
            out_dir=tmp_path / "child",
            site="A",
            parent_bundle=parent.path,
            registry=registry,
            track=False,
        )
    assert info.value.reason == "checkpoint_tampered"
    assert info.value.hint is not None
    assert not (tmp_path / "child").exists()
    assert [m.version for m in registry.list_models()] == [parent.version]


def test_an_unregistered_parent_is_hashed_on_first_use(
    registry: Registry, parent: TinyBundle
) -> None:
    digest = expected_parent_digest(registry, parent.path)
    row = _digest(registry, parent.version)
    assert row is not None
    assert (row.sha256, row.source) == (digest, "first_use")
    (parent.path / CHECKPOINT_FILE).write_bytes(b"changed after first use")
    with pytest.raises(IntegrityMismatchError):
        read_verified(parent.path / CHECKPOINT_FILE, expected_parent_digest(registry, parent.path))
