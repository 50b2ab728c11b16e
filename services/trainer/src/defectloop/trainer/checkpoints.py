"""Torch checkpoints of registered bundles: hashed at registration, verified before fine-tuning.

``model.onnx`` is covered by the bundle manifest's sha256, but ``checkpoint.pt`` (what a fine-tune
starts from) is not. Its sha256 is recorded in the registry (``checkpoint_digests``) when the
version is registered, outside the bundle directory, so whoever can rewrite the bundle cannot also
rewrite the expected digest. The trainer reads the checkpoint once, checks the bytes and loads
exactly those bytes. A bundle never registered is hashed on first use ("first_use"), with a warning.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlmodel import Field, Session, SQLModel

from defectloop.common.errors import IntegrityMismatchError, NotFoundError
from defectloop.common.logging import get_logger

if TYPE_CHECKING:
    from defectloop.trainer.registry import Registry

CHECKPOINT_FILE = "checkpoint.pt"

log = get_logger(__name__)


class CheckpointDigest(SQLModel, table=True):
    __tablename__ = "checkpoint_digests"

    model_version: str = Field(primary_key=True, max_length=128)
    sha256: str = Field(max_length=64)
    source: str = Field(default="registration", description="registration | first_use")
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def checkpoint_path(bundle_dir: Path) -> Path:
    return Path(bundle_dir) / CHECKPOINT_FILE


def file_sha256(path: Path) -> str:
    # A checkpoint is a few MB and read_verified holds it in memory anyway: no streaming needed.
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_checkpoint(
    session: Session, model_version: str, bundle_dir: Path, *, source: str = "registration"
) -> CheckpointDigest | None:
    """Add the digest of the bundle's checkpoint to ``session``; None when it has none (ONNX-only)."""
    path = checkpoint_path(bundle_dir)
    if not path.is_file():
        return None
    known = session.get(CheckpointDigest, model_version)
    if known is not None:
        return known
    row = CheckpointDigest(model_version=model_version, sha256=file_sha256(path), source=source)
    session.add(row)
    return row


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """The checkpoint's bytes, once their sha256 matches ``expected_sha256``."""
    if not path.is_file():
        raise NotFoundError(
            f"no {path.name} at {path.parent}",
            hint="fine-tune from a bundle written by `defectloop train`",
        )
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise IntegrityMismatchError(
            f"parent checkpoint {path} sha256 {actual[:12]}… does not match the registered "
            f"{expected_sha256[:12]}…",
            reason="checkpoint_tampered",
            hint="the parent's checkpoint changed since it was registered; restore the bundle "
            "or fine-tune from another version",
        )
    return data


def expected_parent_digest(registry: Registry, bundle_dir: Path) -> str:
    """The digest the parent's checkpoint must have: the registered one, else recorded now."""
    from defectloop.vision.manifest import load_manifest

    version = load_manifest(bundle_dir).version
    path = checkpoint_path(bundle_dir)
    with registry.session() as s:
        known = s.get(CheckpointDigest, version)
        if known is not None:
            return known.sha256
        row = record_checkpoint(s, version, bundle_dir, source="first_use")
        if row is None:
            raise NotFoundError(
                f"bundle {bundle_dir} has no {CHECKPOINT_FILE} to fine-tune from",
                hint="fine-tune from a bundle written by `defectloop train`",
            )
        s.commit()
    log.warning("parent_checkpoint_first_seen", version=version, path=str(path), sha256=row.sha256)
    return row.sha256
