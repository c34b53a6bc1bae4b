"""The `idxr-pg` command line. Each command group lives in its own module here."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from idxr_pg.cli.context import AppContext
from idxr_pg.config import Settings
from idxr_pg.db.connection import one_line, read_only_refusal
from idxr_pg.errors import IdxrError
from idxr_pg.logs import configure_logging


class IdxrGroup(click.Group):
    """Reports IdxrError (config, database, setup problems) as one clear message, exit 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except IdxrError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except Exception as exc:
            refused = read_only_refusal(exc)
            if refused is None:
                raise
            click.secho(
                f"error: the database is read-only (a hot standby, or a read-only session): "
                f"{one_line(refused.diag.message_primary or str(refused))}; run this command "
                "against the primary",
                fg="red",
                err=True,
            )
            sys.exit(1)


@click.group(cls=IdxrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar=["IDXR_DATABASE_URL", "DATABASE_URL"],
    default=lambda: Settings().database_url,
    show_default="IDXR_DATABASE_URL, else DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres",
    help="PostgreSQL connection URL.",
)
@click.option(
    "--config",
    "config_path",
    envvar="IDXR_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML config with entity kinds and embedding settings [default: IDXR_CONFIG, else ./idxr.yaml].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines for people (text) or for machines (json).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@click.version_option(package_name="idxr-pg")
@click.pass_context
def main(
    ctx: click.Context,
    database_url: str,
    config_path: Path | None,
    log_format: str,
    log_level: str,
) -> None:
    """idxr-pg keeps a vector search index inside PostgreSQL in sync with your tables.

    Triggers capture changes to watched tables into a queue; `idxr-pg worker` re-embeds only
    the fields whose content changed and upserts them into idxr.search_index, which SQL users
    query with pgvector distance and LTree path filters.

    Typical first run: `idxr-pg migrate`, `idxr-pg triggers install`, `idxr-pg backfill KIND`,
    then keep `idxr-pg worker` running.
    """
    configure_logging(log_format, log_level)
    ctx.obj = AppContext(database_url=database_url, config_path=config_path)


# Each module lists its click commands in COMMANDS; add a module here to expose it.
COMMAND_MODULES = (
    "idxr_pg.cli.schema_commands",  # migrate, uninstall, doctor
    "idxr_pg.cli.triggers_commands",  # triggers install|drop|sql|list
    "idxr_pg.cli.worker_commands",  # worker, refresh
    "idxr_pg.cli.errors_commands",  # errors list|show|retry
    "idxr_pg.cli.backfill_commands",  # backfill, jobs
    "idxr_pg.cli.reindex_commands",  # plan, reindex
    "idxr_pg.cli.versions_commands",  # versions list|create|activate|rollback|drop
    "idxr_pg.cli.status_commands",  # status, stale
    "idxr_pg.cli.pause_commands",  # pause, resume
    "idxr_pg.cli.init_commands",  # init
    "idxr_pg.cli.search_commands",  # search, similar
    "idxr_pg.cli.demo_commands",  # demo
    "idxr_pg.cli.load_commands",  # load, loads
)


def _register() -> None:
    import importlib

    for module_name in COMMAND_MODULES:
        for command in importlib.import_module(module_name).COMMANDS:
            main.add_command(command)


_register()
