"""Alembic environment for the idxr schema.

The database URL comes from `-x database_url=...`, else idxr-pg's settings
(IDXR_DATABASE_URL, DATABASE_URL, then the local default).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from idxr_pg.db.migrations import sqlalchemy_url
from idxr_pg.schema import SCHEMA, VERSION_TABLE

config = context.config


def _database_url() -> str:
    explicit = config.attributes.get("database_url") or context.get_x_argument(
        as_dictionary=True
    ).get("database_url")
    if explicit:
        return sqlalchemy_url(explicit)
    from idxr_pg.config import Settings

    return sqlalchemy_url(Settings().database_url)


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        literal_binds=True,
        version_table_schema=SCHEMA,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            version_table_schema=SCHEMA,
            version_table=VERSION_TABLE,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            context.run_migrations()
            # Downgrading to base leaves only the empty version table: remove the schema too.
            remaining = connection.execute(
                text(f"SELECT count(*) FROM {SCHEMA}.{VERSION_TABLE}")
            ).scalar_one()
            if remaining == 0:
                connection.execute(text(f"DROP SCHEMA {SCHEMA} CASCADE"))
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
