"""Alembic environment: the URL comes from binaudit's settings object."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from core.partitions import partition_tables
from core.settings import Settings
from core.tables import metadata

config = context.config
# `binaudit db upgrade` passes its Settings; the plain `alembic` CLI is an entry point too.
settings: Settings = config.attributes.get("settings") or Settings()
target_metadata = metadata


def run_migrations_offline() -> None:
    context.configure(url=settings.db.url.get_secret_value(), target_metadata=target_metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(settings.db.url.get_secret_value(), poolclass=pool.NullPool,
                           connect_args=settings.db.connect_args())
    with engine.connect() as connection:
        # Partitions (audit_results_y2026m11, ..) are made at run time, not in the metadata:
        # autogenerate must not offer to drop them.
        partitions = partition_tables(connection)
        connection.commit()  # end the read's transaction: Alembic opens its own below
        context.configure(connection=connection, target_metadata=target_metadata,
                          include_name=lambda name, type_, _parents: not (
                              type_ == "table" and name in partitions))
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
