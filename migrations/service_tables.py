"""Each service's tables, and the Alembic upgrade of one service's schema.

SQLModel keeps one global metadata for every model imported, so a service's tables are picked by
the module that defines them. The inference service has no tables (no history).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData
from sqlmodel import SQLModel

ROOT = Path(__file__).resolve().parents[1]

SERVICE_MODULES: dict[str, tuple[str, ...]] = {
    "ingest": ("defectloop.ingest.records",),
    "annotation-sync": ("defectloop.annotation_sync.store", "defectloop.common.authz"),
    "monitor": (
        "defectloop.monitor.tables",
        "defectloop.monitor.viewers",
        "defectloop.common.authz",
    ),
    "trainer": (
        "defectloop.trainer.registry",
        "defectloop.trainer.audit",
        "defectloop.trainer.checkpoints",
        "defectloop.trainer.governance",
        "defectloop.trainer.jobs",
        "defectloop.common.authz",
    ),
}


def service_metadata(service: str) -> MetaData:
    """The tables of ``service``'s models, in a metadata of their own."""
    modules = SERVICE_MODULES[service]
    for name in modules:
        importlib.import_module(name)
    metadata = MetaData()
    for mapper in SQLModel._sa_registry.mappers:  # SQLModel's one registry of table models
        if mapper.class_.__module__ in modules and mapper.local_table is not None:
            mapper.local_table.to_metadata(metadata)  # type: ignore[attr-defined]
    return metadata


def alembic_config(service: str, url: str) -> Config:
    """The Alembic config of ``service``'s history (its section of alembic.ini) on ``url`` (its
    schema: the URL's ``search_path``, where its ``alembic_version`` table lives too)."""
    config = Config(str(ROOT / "migrations" / "alembic.ini"), ini_section=service)
    config.set_section_option(service, "sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(service: str, url: str, revision: str = "head") -> None:
    """Bring ``service``'s schema at ``url`` to ``revision``."""
    command.upgrade(alembic_config(service, url), revision)
