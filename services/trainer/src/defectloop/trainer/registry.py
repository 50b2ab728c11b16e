"""The trainer's model registry (SQLModel): dataset versions, training runs, model versions, deployments.

SQLite file ``$DEFECTLOOP_HOME/trainer.db`` by default; ``DEFECTLOOP_TRAINER_DATABASE_URL`` (or the
older ``DEFECTLOOP_TRAINER_DB_URL``, see :class:`TrainerSettings`) overrides it with any SQLAlchemy
URL (e.g. ``postgresql+psycopg://...``). Only portable column types are used
(JSON documents as TEXT), so the same code runs on PostgreSQL unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Text, UniqueConstraint
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, select

from defectloop.common.db import make_engine
from defectloop.common.errors import (
    ConfigError,
    IntegrityMismatchError,
    NotFoundError,
    TransientError,
)
from defectloop.common.logging import get_logger
from defectloop.common.signing import (
    SIGNED_FILE,
    BundleSignature,
    TrustedKeys,
    project_key,
    sign_bundle,
    verify_signed_file,
)
from defectloop.common.translate import sqlalchemy_errors
from defectloop.trainer.audit import AuditAction, AuditRecord, append_record, install_guards
from defectloop.trainer.checkpoints import CheckpointDigest, record_checkpoint
from defectloop.trainer.settings import TrainerSettings
from defectloop.vision.manifest import BundleManifest, load_manifest

DB_URL_ENV = "DEFECTLOOP_TRAINER_DATABASE_URL"

ROLES = ("champion", "challenger", "shadow")

log = get_logger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class DatasetVersion(SQLModel, table=True):
    __tablename__ = "dataset_versions"

    version: str = Field(primary_key=True, max_length=64, description="sha256 of the manifest.")
    site: str | None = Field(default=None, index=True)
    num_images: int
    num_train: int
    num_val: int
    manifest_json: str = Field(sa_column=Column(Text, nullable=False))
    sources_json: str = Field(
        default="[]", sa_column=Column(Text, nullable=False), description="Dataset dirs last seen."
    )
    created_at: datetime = Field(default_factory=_now)

    @property
    def manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest_json)
        return data

    @property
    def sources(self) -> list[str]:
        data: list[str] = json.loads(self.sources_json)
        return data


class TrainingRun(SQLModel, table=True):
    __tablename__ = "training_runs"

    id: int | None = Field(default=None, primary_key=True)
    dataset_version: str = Field(foreign_key="dataset_versions.version", index=True)
    dataset_dirs_json: str = Field(sa_column=Column(Text, nullable=False))
    site: str | None = Field(default=None, index=True)
    preset: str | None = None
    config_json: str = Field(sa_column=Column(Text, nullable=False))
    config_sha256: str = Field(max_length=64)
    seed: int
    parent_version: str | None = None
    git_commit: str
    lockfile_sha256: str
    mlflow_run_id: str | None = None
    status: str = Field(default="succeeded", description="succeeded | failed")
    train_seconds: float | None = None
    started_at: datetime = Field(default_factory=_now)
    finished_at: datetime | None = None

    @property
    def dataset_dirs(self) -> list[str]:
        data: list[str] = json.loads(self.dataset_dirs_json)
        return data

    @property
    def config(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config_json)
        return data


class RunProvenance(SQLModel, table=True):
    """How a run was made beyond its lineage (a table of its own: older registries need no
    migration, a run without one just has no provenance)."""

    __tablename__ = "training_run_provenance"

    training_run_id: int | None = Field(
        default=None, primary_key=True, foreign_key="training_runs.id"
    )
    git_dirty: bool | None = Field(None, description="Uncommitted changes in the code tree.")
    job_id: str | None = Field(default=None, index=True, description="Retraining job, if any.")
    snapshot_sha256: str | None = Field(default=None, max_length=64)


class DatasetSnapshot(SQLModel, table=True):
    """A dataset version whose images and boxes are in the blob store, listed by a snapshot
    manifest (:mod:`defectloop.trainer.training_data`): what a retrain replays of a model
    trained elsewhere. A table of its own, so older registries need no migration."""

    __tablename__ = "dataset_snapshots"

    dataset_version: str = Field(primary_key=True, max_length=64)
    snapshot_sha256: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=_now)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"

    version: str = Field(primary_key=True, max_length=128)
    name: str = Field(index=True)
    training_run_id: int | None = Field(default=None, foreign_key="training_runs.id")
    dataset_version: str = Field(foreign_key="dataset_versions.version", index=True)
    parent_version: str | None = Field(default=None, index=True)
    site: str | None = Field(default=None, index=True)
    git_commit: str
    lockfile_sha256: str
    config_sha256: str = Field(max_length=64)
    seed: int
    sha256: str = Field(max_length=64, description="sha256 of model.onnx.")
    bundle_path: str
    metrics_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    author: str
    created_at: datetime = Field(default_factory=_now)

    @property
    def metrics(self) -> dict[str, float]:
        data: dict[str, float] = json.loads(self.metrics_json)
        return data


class Deployment(SQLModel, table=True):
    """Which model version plays which role at a site (written by promote/approve/rollback)."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("site", "role", "model_version", "requested_at"),)

    id: int | None = Field(default=None, primary_key=True)
    site: str = Field(index=True)
    role: str = Field(description="champion | challenger | shadow")
    model_version: str = Field(foreign_key="model_versions.version", index=True)
    status: str = Field(default="requested", description="requested | approved | active | retired")
    requested_by: str
    approver: str | None = None
    reason: str | None = None
    requested_at: datetime = Field(default_factory=_now)
    approved_at: datetime | None = None
    activated_at: datetime | None = None
    retired_at: datetime | None = None


def model_version_from_manifest(
    manifest: BundleManifest,
    *,
    bundle_dir: Path,
    site: str | None,
    author: str,
    training_run_id: int | None = None,
) -> ModelVersion:
    """The registry row of a bundle: identity, lineage and metrics all come from its manifest."""
    lineage = manifest.lineage
    return ModelVersion(
        version=manifest.version,
        name=manifest.name,
        training_run_id=training_run_id,
        dataset_version=lineage.dataset_version,
        parent_version=lineage.parent,
        site=site,
        git_commit=lineage.git_commit,
        lockfile_sha256=lineage.lockfile_sha256,
        config_sha256=lineage.config_sha256,
        seed=lineage.seed,
        sha256=manifest.sha256,
        bundle_path=str(bundle_dir.resolve()),
        metrics_json=json.dumps(manifest.metrics, sort_keys=True),
        author=author,
        created_at=manifest.created_at,
    )


def database_url() -> str:
    return TrainerSettings().resolved_database_url()


class Registry:
    """Thin data access over the registry tables; SQLAlchemy errors become defectloop errors."""

    def __init__(self, url: str | None = None, *, signing_key: Path | None = None) -> None:
        """``signing_key``: the private key bundles are signed with at registration (default:
        :func:`defectloop.common.signing.default_key_path`, created on first use)."""
        self.url = url or database_url()
        self.signing_key = signing_key
        try:
            # WAL + busy timeout on SQLite (CLI and service share the file); PostgreSQL as is.
            self.engine: Engine = make_engine(self.url, create_tables=False)
            SQLModel.metadata.create_all(
                self.engine,
                tables=[
                    t.__table__  # type: ignore[union-attr]  # SQLModel tables have one
                    for t in (
                        DatasetVersion,
                        TrainingRun,
                        RunProvenance,
                        DatasetSnapshot,
                        ModelVersion,
                        Deployment,
                        AuditRecord,
                        CheckpointDigest,
                    )
                ],
            )
            install_guards(self.engine)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:  # bad URL, missing driver
            raise ConfigError(
                f"invalid trainer registry URL {self.url!r}: {exc}",
                hint=f"set {DB_URL_ENV} to a SQLAlchemy URL, e.g. sqlite:///trainer.db",
            ) from exc
        except SQLAlchemyError as exc:
            raise TransientError(
                f"cannot open the trainer registry at {self.url}: {exc}",
                hint=f"check {DB_URL_ENV} or $DEFECTLOOP_HOME",
            ) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        with (
            sqlalchemy_errors("trainer registry"),
            Session(self.engine, expire_on_commit=False) as session,
        ):
            yield session

    def upsert_dataset(self, record: DatasetVersion) -> DatasetVersion:
        with self.session() as s:
            existing = s.get(DatasetVersion, record.version)
            if existing is not None:
                # Same content, maybe new location: remember where it was seen last.
                existing.sources_json = record.sources_json
                s.add(existing)
                s.commit()
                return existing
            s.add(record)
            s.commit()
            return record

    def add_run(self, run: TrainingRun, *, provenance: RunProvenance | None = None) -> TrainingRun:
        with self.session() as s:
            s.add(run)
            if provenance is not None:
                s.flush()  # the run's id
                provenance.training_run_id = run.id
                s.add(provenance)
            s.commit()
            s.refresh(run)
            return run

    def sign_bundle(self, model: ModelVersion) -> BundleSignature | None:
        """Sign ``model``'s bundle with the project key (inference loads only signed bundles);
        None when no bundle is on disk at ``bundle_path`` (a record-only registration: nothing
        to sign, and inference would refuse it unsigned).

        Refused if the bundle on disk is not the registered one: the registry vouches only for
        what it registered.
        """
        bundle = Path(model.bundle_path)
        if not (bundle / SIGNED_FILE).is_file():
            log.warning("bundle_not_signed", model_version=model.version, reason="no_bundle")
            return None
        manifest = load_manifest(bundle)
        if manifest.sha256 != model.sha256:
            raise IntegrityMismatchError(
                f"bundle {bundle} is not registered model {model.version} (sha256 differs)",
                hint="a bundle's version must not be reused for different weights",
            )
        return sign_bundle(bundle, project_key(self.signing_key))

    def ensure_signed(self, model: ModelVersion) -> None:
        """Sign a registered bundle that was not signed at registration (registered before
        signing existed, or recorded without its bundle).

        A bundle that *was* signed at registration and no longer verifies is refused, never
        signed again: re-signing would bless whatever was edited since.
        """
        bundle = Path(model.bundle_path)
        key = project_key(self.signing_key)
        try:
            verify_signed_file(bundle, TrustedKeys([key.public_key()]))
            return
        except IntegrityMismatchError as exc:
            with self.session() as s:
                registered = s.exec(
                    select(AuditRecord).where(
                        AuditRecord.model_version == model.version,
                        AuditRecord.action == AuditAction.REGISTERED,
                    )
                ).first()
            if registered is not None and registered.evidence.get("signing_key_id"):
                raise IntegrityMismatchError(
                    f"bundle of model {model.version} was signed at registration and no longer "
                    f"verifies: {exc}",
                    reason=exc.reason,
                    hint="the bundle changed after registration; restore it or register anew",
                ) from exc
        self.sign_bundle(model)

    def add_model(self, model: ModelVersion) -> ModelVersion:
        """Register ``model``: its bundle is signed, and its checkpoint's digest and a
        ``registered`` audit record (naming the signing key) go in the same transaction."""
        signature = self.sign_bundle(model)
        with self.session() as s:
            s.add(model)
            digest = record_checkpoint(s, model.version, Path(model.bundle_path))
            append_record(
                s,
                action=AuditAction.REGISTERED,
                actor=model.author,
                model_version=model.version,
                site=model.site,
                reason="new model version",
                evidence={
                    "sha256": model.sha256,
                    "signing_key_id": signature.key_id if signature else None,
                    "manifest_sha256": signature.signed_sha256 if signature else None,
                    "checkpoint_sha256": digest.sha256 if digest is not None else None,
                    "dataset_version": model.dataset_version,
                    "parent_version": model.parent_version,
                    "training_run_id": model.training_run_id,
                    "metrics": model.metrics,
                },
            )
            s.commit()
            return model

    def list_models(self, *, site: str | None = None, limit: int = 100) -> list[ModelVersion]:
        with self.session() as s:
            query = select(ModelVersion)
            if site is not None:
                query = query.where(ModelVersion.site == site)
            query = query.order_by(ModelVersion.created_at.desc()).limit(limit)  # type: ignore[attr-defined]
            return list(s.exec(query).all())

    def get_model(self, version: str) -> ModelVersion:
        with self.session() as s:
            model = s.get(ModelVersion, version)
        if model is None:
            raise NotFoundError(
                f"model version {version} not found", hint="run `defectloop models list`"
            )
        return model

    def get_run(self, run_id: int) -> TrainingRun:
        with self.session() as s:
            run = s.get(TrainingRun, run_id)
        if run is None:
            raise NotFoundError(f"training run {run_id} not found")
        return run

    def get_dataset(self, version: str) -> DatasetVersion:
        with self.session() as s:
            ds = s.get(DatasetVersion, version)
        if ds is None:
            raise NotFoundError(f"dataset version {version} not found")
        return ds

    def run_provenance(self, run_id: int) -> RunProvenance | None:
        with self.session() as s:
            return s.get(RunProvenance, run_id)

    def dataset_snapshot(self, dataset_version: str) -> str | None:
        """The snapshot digest of ``dataset_version``'s stored images, if they were stored."""
        with self.session() as s:
            row = s.get(DatasetSnapshot, dataset_version)
        return None if row is None else row.snapshot_sha256

    def set_dataset_snapshot(self, dataset_version: str, snapshot_sha256: str) -> None:
        with self.session() as s:
            if s.get(DatasetSnapshot, dataset_version) is None:
                s.add(
                    DatasetSnapshot(
                        dataset_version=dataset_version, snapshot_sha256=snapshot_sha256
                    )
                )
                s.commit()

    def add_deployment(self, deployment: Deployment) -> Deployment:
        if deployment.role not in ROLES:
            raise ConfigError(
                f"unknown role {deployment.role!r}", hint=f"one of {', '.join(ROLES)}"
            )
        with self.session() as s:
            s.add(deployment)
            s.commit()
            s.refresh(deployment)
            return deployment

    def deployments(self, site: str | None = None) -> list[Deployment]:
        with self.session() as s:
            query = select(Deployment)
            if site is not None:
                query = query.where(Deployment.site == site)
            return list(s.exec(query.order_by(Deployment.requested_at)).all())  # type: ignore[arg-type]

    def dispose(self) -> None:
        self.engine.dispose()
