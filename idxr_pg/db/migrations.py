"""Running the Alembic migrations from Python (`idxr-pg migrate`, `idxr-pg uninstall`).

The Alembic environment and its revisions ship inside the package (idxr_pg/migrations), so
an installed wheel migrates. `upgrade` also re-applies the schema's functions and views (done
by the environment itself, see idxr_pg.schema).
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config

from idxr_pg.db import hnsw
from idxr_pg.db.connection import connect
from idxr_pg.errors import IdxrError
from idxr_pg.schema import HEAD_REVISION, SCHEMA, VERSION_TABLE, uninstall_script

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"


def sqlalchemy_url(url: str) -> str:
    """SQLAlchemy needs the driver in the URL: postgresql:// -> postgresql+psycopg://."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if "=" in url and "://" not in url:  # libpq keyword/value conninfo
        return "postgresql+psycopg:///?" + "&".join(
            f"{k}={v}" for k, v in psycopg.conninfo.conninfo_to_dict(url).items()
        )
    return url


def alembic_config(database_url: str) -> Config:
    if not (MIGRATIONS_DIR / "env.py").exists():
        raise FileNotFoundError(
            f"Alembic migrations not found at {MIGRATIONS_DIR}: this idxr-pg install is "
            "incomplete; reinstall it, or apply sql/install.sql with psql"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    with connect(database_url, autocommit=True, vector=False) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", [f"{SCHEMA}.{VERSION_TABLE}"]).fetchone()[0]
        if exists is None:
            return None
        row = conn.execute(f"SELECT version_num FROM {SCHEMA}.{VERSION_TABLE}").fetchone()
        return row[0] if row else None


def is_current(database_url: str) -> bool:
    return current_revision(database_url) == HEAD_REVISION


def set_embedding_dimensions(database_url: str, dimensions: int) -> None:
    """Make sure the HNSW index of N-dimensional vectors exists; drop those of unused sizes."""
    with connect(database_url, vector=False) as conn:
        try:
            conn.execute("SELECT idxr.set_embedding_dimensions(%s)", [dimensions])
        except psycopg.errors.RaiseException as exc:
            hint = exc.diag.message_hint
            raise IdxrError(f"{exc.diag.message_primary}. {hint or ''}".strip()) from None


def set_index_options(
    database_url: str,
    dimensions: int,
    *,
    storage: str | None = None,
    m: int | None = None,
    ef_construction: int | None = None,
) -> tuple[hnsw.IndexOptions, bool]:
    """Record how the HNSW index of ``dimensions``-sized vectors is built (None: keep) and,
    if that index exists with another definition, rebuild it concurrently (a missing one is
    left to ``set_embedding_dimensions``); returns the options and whether it was rebuilt.
    Raises IdxrError for a value pgvector would refuse."""
    with connect(database_url, autocommit=True, vector=False) as conn:
        options = hnsw.set_index_options(
            conn, dimensions, storage=storage, m=m, ef_construction=ef_construction
        )
        states = hnsw.index_state(conn, dimensions)
        if not states or (len(states) == 1 and states[0].valid and states[0].options == options):
            return options, False
        return options, hnsw.switch_index(conn, dimensions)


def uninstall(database_url: str) -> None:
    """Remove the idxr schema and every trigger it installed; application tables stay."""
    with connect(database_url, vector=False) as conn:
        conn.execute(uninstall_script())
