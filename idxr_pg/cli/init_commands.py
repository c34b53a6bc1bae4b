"""`idxr-pg init`: scaffold an idxr.yaml from a module of Pydantic models."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--models",
    "module_name",
    required=True,
    help="Python module holding the Pydantic models, e.g. myapp.models (imported; the current "
    "directory is on the path).",
)
@click.option(
    "--table-prefix",
    default="public.",
    show_default=True,
    help="Prepended to each guessed table name (a schema like 'app.' and/or a name prefix).",
)
@click.option(
    "--output",
    "-o",
    default="idxr.yaml",
    show_default=True,
    help="File to write; '-' prints to stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def init(module_name: str, table_prefix: str, output: str, force: bool) -> None:
    """Scaffold an idxr.yaml entry for each Pydantic model in a module, for review.

    Names, tables and keys are guesses (snake_case class name, a plural table name, a key
    field named id, <name>_id or uuid); each model's fields are listed as comments. Edit the
    file, then `idxr-pg migrate`, `idxr-pg triggers install` and `idxr-pg backfill KIND`.
    """
    from idxr_pg.scaffold import scaffold

    target = None if output == "-" else Path(output)
    text, entries = scaffold(module_name, target, table_prefix=table_prefix, force=force)
    if target is None:
        click.echo(text, nl=False)
        return
    names = ", ".join(entry.name for entry in entries)
    click.echo(f"wrote {target} with {len(entries)} entity kinds ({names}); review it before use")


COMMANDS = [init]
