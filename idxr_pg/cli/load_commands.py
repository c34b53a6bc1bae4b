"""`idxr-pg load FILE... --table T` and `idxr-pg loads`: files into tables, and the manifest."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import Column, format_duration, print_json, print_listing, when
from idxr_pg.cli.options import count_option, json_flag, progress_interval_option
from idxr_pg.db.loads import Load, list_loads, reconcile_abandoned
from idxr_pg.runtime.primary import can_write

LOAD_COLUMNS = (
    Column("ID", justify="right"),
    "TABLE",
    Column("FILE", fold=True),
    "STATE",
    Column("READ", justify="right"),
    Column("INSERTED", justify="right"),
    Column("UPDATED", justify="right"),
    Column("UNCHANGED", justify="right"),
    Column("REJECTED", justify="right"),
    Column("DELETED", justify="right"),
    Column("PARTS", justify="right"),
    Column("LAST LINE", justify="right"),
    "STARTED",
    "TOOK",
    "NOTE",
)


def summary(load: Load) -> str:
    c = load.counts
    return (
        f"load #{load.id} of {load.file_path} into {load.target_table}: {load.state}, "
        f"{c.read:,} rows read: {c.inserted:,} inserted, {c.updated:,} updated, "
        f"{c.unchanged:,} unchanged, {c.rejected:,} rejected; {load.deleted:,} deleted; "
        f"took {format_duration(load.duration_seconds)}"
    )


def load_note(load: Load) -> str:
    notes = [load.format, load.encoding]
    if load.appends_to:
        notes.append(f"appended after #{load.appends_to}")
    if load.resumes:
        notes.append(f"resumed {load.resumes}x")
    if load.options.get("delete_missing"):
        notes.append("snapshot")
    if load.error:
        notes.append(f"error: {load.error[:100]}")
    return "; ".join(notes)


def load_row(load: Load) -> list[object]:
    c = load.counts
    return [
        load.id,
        load.target_table,
        load.file_path,
        load.state,
        f"{c.read:,}",
        f"{c.inserted:,}",
        f"{c.updated:,}",
        f"{c.unchanged:,}",
        f"{c.rejected:,}",
        f"{load.deleted:,}",
        load.partitions,
        f"{load.last_line:,}",
        when(load.started_at),
        format_duration(load.duration_seconds),
        load_note(load),
    ]


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=True))
@click.option("--table", required=True, metavar="[SCHEMA.]TABLE", help="The table to load into.")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="File format [default: from the extension: .csv; .jsonl or .ndjson].",
)
@click.option(
    "--key",
    default=None,
    metavar="COLUMN",
    help="The column rows are matched on [default: the table's primary key]; it needs a "
    "unique index of its own.",
)
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="COLUMN=FIELD",
    help="Load the file's FIELD (CSV header name, JSON key) into COLUMN (repeatable). Fields "
    "named like a column need none.",
)
@click.option(
    "--create",
    is_flag=True,
    help="Create the table if it does not exist: from the CSV header (text columns), the "
    "first JSON objects (types from their values) or --model, with --key (default: id, else "
    "the first column) as its primary key.",
)
@click.option(
    "--model",
    default=None,
    metavar="MODULE:CLASS",
    help="With --create: a Pydantic model whose fields give the columns and their types.",
)
@click.option(
    "--add-kind",
    default=None,
    metavar="NAME",
    help="With --model: add an entity kind NAME (that model, the table, its key) to the config "
    "file (--config, IDXR_CONFIG, else ./idxr.yaml) unless one of that name is there; then "
    "`idxr-pg triggers install` watches the table.",
)
@click.option(
    "--delete-missing",
    is_flag=True,
    help="The file is a full snapshot: delete the table's rows whose key it does not contain "
    "(takes one FILE; the whole file is read, never only its appended part).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the latest unfinished (killed, interrupted, failed) load of the same file "
    "after its last committed partition; without one, load as usual.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Read the whole file even if these bytes were loaded already (rows whose fingerprint "
    "did not change are still not written).",
)
@click.option(
    "--encoding",
    default=None,
    help="The file's encoding (utf-8, utf-16, cp1252, latin-1, ...) [default: detected].",
)
@click.option(
    "--errors",
    "errors_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="YAML file of rejected lines [default: FILE.errors.yaml beside the file].",
)
@click.option(
    "--partition-rows",
    type=click.IntRange(1, 10_000_000),
    default=20_000,
    show_default=True,
    help="Rows per partition: each is one transaction and one manifest entry.",
)
@progress_interval_option
@json_flag("Print the loads as a JSON list.")
@pass_app
def load(
    app: AppContext,
    files: tuple[Path, ...],
    table: str,
    file_format: str | None,
    key: str | None,
    maps: tuple[str, ...],
    create: bool,
    model: str | None,
    add_kind: str | None,
    delete_missing: bool,
    resume: bool,
    force: bool,
    encoding: str | None,
    errors_path: Path | None,
    partition_rows: int,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Load CSV or JSONL FILEs into a table, writing only new or changed rows.

    Each file streams through COPY into a staging table in partitions of --partition-rows
    rows. A row is upserted only when the sha256 fingerprint of its normalised values is new
    or changed (or its key is missing from the table), so on a watched table only those rows
    are re-indexed. Each partition commits with its entry in the manifest (idxr.loads, see
    `idxr-pg loads`): after a kill, `--resume` continues after the last one. Loading the same
    bytes again does nothing; a file that only grew loads only its new lines.

    The encoding is detected (BOM, UTF-8, UTF-16, cp1252, latin-1...; --encoding overrides);
    any newline style works. Bad lines (wrong column count, invalid JSON, a value failing its
    column's type, a NUL byte, a missing key) are skipped and written to a YAML error file
    with their line number, text and reason; the good rows still load. Exit status: 0, or 2
    when lines were rejected, 1 on an error.
    """
    from idxr_pg.loading.errors import LoadError
    from idxr_pg.loading.load import Loader, LoadOptions

    if delete_missing and len(files) > 1:
        raise LoadError("--delete-missing takes one FILE (the snapshot)")
    if model and not create:
        raise LoadError("--model is only used with --create")
    if add_kind and not model:
        raise LoadError("--add-kind needs --model (the kind's Pydantic model)")
    if errors_path and len(files) > 1:
        raise LoadError("--errors takes one FILE (each file gets its own error file)")
    options = LoadOptions(
        table=table,
        format=file_format,
        key=key,
        maps=maps,
        create=create,
        model=model,
        delete_missing=delete_missing,
        resume=resume,
        force=force,
        encoding=encoding,
        errors_path=errors_path,
        partition_rows=partition_rows,
        progress_interval=progress_interval,
    )
    loader = Loader(app.database_url, options)
    done = []
    for path in files:
        result = loader.run(path)
        done.append(result)
        if not as_json:
            click.echo(summary(result))
            if result.counts.rejected:
                click.echo(
                    f"warning: {result.counts.rejected:,} lines rejected: see {result.errors_path}",
                    err=True,
                )
    if add_kind and model and done:
        from idxr_pg.config import Settings
        from idxr_pg.loading.kind_entry import add_kind as add_entry

        config_path = app.config_path or Settings().config
        first = done[0]
        if add_entry(config_path, add_kind, model, first.target_table, first.key_column):
            click.echo(f"added entity kind {add_kind} to {config_path}", err=True)
        else:
            click.echo(f"{config_path} already has an entity kind {add_kind}", err=True)
    if as_json:
        print_json([item.as_dict() for item in done])
    if any(item.counts.rejected for item in done):
        sys.exit(2)


@click.command()
@json_flag("Print the loads as a JSON list.")
@click.option("--table", default=None, metavar="[SCHEMA.]TABLE", help="Only loads into this table.")
@count_option(
    "--limit", click.IntRange(1, 10_000), 20, "How many of the most recent loads to show."
)
@pass_app
def loads(app: AppContext, as_json: bool, table: str | None, limit: int) -> None:
    """The manifest of `idxr-pg load`, newest first: file, state, rows read, inserted, updated,
    unchanged, rejected and deleted, partitions committed, last line, duration.

    A load still marked running whose process is gone (killed) is marked interrupted first;
    continue it with `idxr-pg load FILE --table TABLE --resume`.
    """
    with app.db() as conn:
        if can_write(conn):  # on a standby, the manifest as the primary last wrote it
            reconcile_abandoned(conn)
        found = list_loads(conn, table=table, limit=limit)
    print_listing(
        found,
        as_json=as_json,
        to_json=Load.as_dict,
        empty="no loads yet" + (f" into {table}" if table else ""),
        columns=LOAD_COLUMNS,
        to_row=load_row,
    )


COMMANDS = [load, loads]
