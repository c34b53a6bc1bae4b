"""Install, check and remove the idxr schema: migrate, uninstall, doctor."""

from __future__ import annotations

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.config import DEFAULT_MODEL, DEFAULT_MODEL_DIMENSIONS
from idxr_pg.db import migrations
from idxr_pg.db.connection import redact
from idxr_pg.db.hnsw import STORAGES
from idxr_pg.extensions import REQUIRED_EXTENSIONS, ensure_capture_library, ensure_extensions
from idxr_pg.schema import install_script, uninstall_script


def configured_dimensions(app: AppContext) -> int:
    """Vector size for the configured model, without loading the default model."""
    embedding = app.config.embedding
    if embedding.dimensions is not None:
        return embedding.dimensions
    if embedding.model == DEFAULT_MODEL:
        return DEFAULT_MODEL_DIMENSIONS
    from idxr_pg.embedding import load_embedder

    return load_embedder(embedding).dimensions


@click.command()
@click.option(
    "--sql",
    "print_sql",
    is_flag=True,
    help="Print the DDL (identical to sql/install.sql) instead of running it.",
)
@click.option(
    "--dimensions",
    type=click.IntRange(1, 16000),
    default=None,
    help="The configured model's vector size, whose HNSW index is created if missing (indexes "
    "of sizes nothing uses are dropped; kinds of other models keep theirs) [default: from the "
    "config's embedding model; 384 for the default].",
)
@click.option(
    "--index-storage",
    type=click.Choice(STORAGES),
    default=None,
    help="What the HNSW index of that size holds: halfvec (float16, about half the size) or "
    "vector (float32); the column and returned distances stay float32 [default: the config's "
    "index.storage, else what the database records: halfvec for a new size, vector for an "
    "index that predates the option].",
)
@click.option(
    "--hnsw-m",
    type=click.IntRange(2, 100),
    default=None,
    help="HNSW m of that index [default: the config's index.m, else as recorded: 16 at first].",
)
@click.option(
    "--hnsw-ef-construction",
    type=click.IntRange(4, 1000),
    default=None,
    help="HNSW ef_construction of that index, at least twice m [default: the config's "
    "index.ef_construction, else as recorded: 64 at first].",
)
@pass_app
def migrate(
    app: AppContext,
    print_sql: bool,
    dimensions: int | None,
    index_storage: str | None,
    hnsw_m: int | None,
    hnsw_ef_construction: int | None,
) -> None:
    """Create or upgrade the idxr schema (Alembic upgrade head).

    Safe to run again: an up-to-date database is left as it is. Needs the vector and ltree
    extensions to be available on the server (`idxr-pg doctor` checks). When the HNSW index's
    storage or parameters change, it is rebuilt concurrently (the old one serves until the new
    one is built).
    """
    if print_sql:
        click.echo(install_script(), nl=False)
        return
    dims = dimensions or configured_dimensions(app)
    configured = app.config.index
    storage = index_storage or configured.storage
    m = hnsw_m or configured.m
    ef_construction = hnsw_ef_construction or configured.ef_construction
    before = migrations.current_revision(app.database_url)
    migrations.upgrade(app.database_url)
    options, rebuilt = migrations.set_index_options(
        app.database_url, dims, storage=storage, m=m, ef_construction=ef_construction
    )
    migrations.set_embedding_dimensions(app.database_url, dims)
    after = migrations.current_revision(app.database_url)
    state = "already up to date" if before == after else f"migrated {before or 'base'} -> {after}"
    click.echo(f"idxr schema {state} in {redact(app.database_url)} ({dims}-dimensional embeddings)")
    if rebuilt:
        click.echo(
            f"HNSW index of {dims}-dimensional vectors rebuilt concurrently: "
            f"{options.storage}, m {options.m}, ef_construction {options.ef_construction}"
        )


@click.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--sql", "print_sql", is_flag=True, help="Print the DDL (sql/uninstall.sql) instead.")
@pass_app
def uninstall(app: AppContext, yes: bool, print_sql: bool) -> None:
    """Remove the idxr schema, its data and every trigger idxr-pg installed.

    Application tables and their rows are left untouched; the vector and ltree extensions
    stay installed.
    """
    if print_sql:
        click.echo(uninstall_script(), nl=False)
        return
    if not yes:
        click.confirm(
            f"Drop schema idxr (search index, queue, jobs) from {redact(app.database_url)}?",
            abort=True,
        )
    migrations.uninstall(app.database_url)
    click.echo(f"idxr-pg removed from {redact(app.database_url)}")


@click.command()
@click.option(
    "--install-missing",
    is_flag=True,
    help="On a local Debian server (as root), build a missing pgvector from Debian's source "
    "package and the C capture trigger (idxr_capture) from the package's sources.",
)
@pass_app
def doctor(app: AppContext, install_missing: bool) -> None:
    """Check that the server is PostgreSQL >= 15 with the vector and ltree extensions, and
    whether it has the C capture trigger (optional: capture uses plpgsql without it)."""
    facts = ensure_extensions(app.database_url, install_missing=install_missing)
    versions = ", ".join(f"{name} {facts.available[name]}" for name in REQUIRED_EXTENSIONS)
    click.echo(f"PostgreSQL {facts.version} at {redact(app.database_url)}: {versions} available")
    capture = ensure_capture_library(app.database_url, facts, install_missing=install_missing)
    click.echo(capture.describe())


COMMANDS = [migrate, uninstall, doctor]
