"""One Alembic environment for every service; each service has its own history
(``services/<service>/alembic/versions``) and its own schema's ``alembic_version`` table.

The service is named in the Alembic config (``service`` main option); its tables are listed
in ``service_tables.py``, whose ``upgrade(service, url)`` runs this environment.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import context
from sqlalchemy import engine_from_config, pool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from service_tables import service_metadata

config = context.config
target_metadata = service_metadata(config.get_main_option("service") or "")


def run_migrations_online() -> None:
    section = config.get_section(config.config_ini_section, {})
    # `-x url=...`: the URL from the command line (the stack's PostgreSQL), else the config's.
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        section["sqlalchemy.url"] = url
    connectable = engine_from_config(
        section,
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
