"""Alembic environment for the idxr schema, shipped inside the package.

The database URL comes from `-x database_url=...` (or the `database_url` attribute that
idxr_pg.db.migrations sets), else idxr-pg's settings (IDXR_DATABASE_URL, DATABASE_URL, then
the local default).

Revisions create the tables; after an upgrade that leaves the database at the head revision
this module re-applies the idempotent part of the schema (functions, views, types: see
idxr_pg.schema) in the same transaction, so a failed migrate changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from alembic import context
from alembic.runtime.migration import MigrationInfo
from sqlalchemy import create_engine, make_url, pool, text

from idxr_pg.db.connection import missing_keepalives
from idxr_pg.db.migrations import sqlalchemy_url
from idxr_pg.schema import SCHEMA, VERSION_TABLE, reapplied_sql, uninstall_script

config = context.config
MIGRATE_LOCK = "idxr_pg.migrations"  # advisory lock key (hashed), held until the migrate commits


def _database_url() -> str:
    explicit = config.attributes.get("database_url") or context.get_x_argument(
        as_dictionary=True
    ).get("database_url")
    if explicit:
        return sqlalchemy_url(explicit)
    from idxr_pg.config import Settings

    return sqlalchemy_url(Settings().database_url)


class _Steps:
    """Records the steps Alembic applies, to tell an upgrade from a downgrade or a stamp."""

    def __init__(self) -> None:
        self.steps: list[MigrationInfo] = []

    def __call__(self, *, step: MigrationInfo, **_: Any) -> None:
        self.steps.append(step)

    def only_upgrades(self) -> bool:
        return all(step.is_upgrade and not step.is_stamp for step in self.steps)


def _at_head(heads: Iterable[str | None]) -> bool:
    return tuple(heads) == (context.script.get_current_head(),)


def _configure(steps: _Steps, **options: Any) -> None:
    context.configure(
        version_table_schema=SCHEMA,
        version_table=VERSION_TABLE,
        on_version_apply=steps,
        **options,
    )


def run_migrations_offline() -> None:
    steps = _Steps()
    _configure(steps, url=_database_url(), literal_binds=True)
    with context.begin_transaction():
        context.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        context.run_migrations()
        if steps.only_upgrades() and _at_head((context.get_revision_argument(),)):
            context.execute(reapplied_sql())


def run_migrations_online() -> None:
    url = make_url(_database_url())
    # TCP keepalives as on every idxr-pg connection (the URL's own values win).
    engine = create_engine(url, poolclass=pool.NullPool, connect_args=missing_keepalives(url.query))
    steps = _Steps()
    with engine.connect() as connection:
        _configure(steps, connection=connection, transaction_per_migration=False)
        with context.begin_transaction():
            # One migrate at a time per database: concurrent re-applies of the same function
            # fail with "tuple concurrently updated"; the second waits, then finds head.
            connection.execute(text(f"SELECT pg_advisory_xact_lock(hashtext('{MIGRATE_LOCK}'))"))
            connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            context.run_migrations()
            heads = context.get_context().get_current_heads()
            if not heads:
                # Downgrading to base leaves only the empty version table: remove the schema too.
                context.execute(uninstall_script())
            elif steps.only_upgrades() and _at_head(heads):
                context.execute(reapplied_sql())
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
