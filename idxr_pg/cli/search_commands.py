"""Searching the index from the command line: search, similar."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import Column, print_listing
from idxr_pg.cli.options import count_option, json_flag

if TYPE_CHECKING:
    from idxr_pg.search import SearchHit

VALUE_WIDTH = 60

WHERE_HELP = (
    "Only entities with a field meeting this condition: PATH[:TYPE] OP VALUE, PATH an lquery, "
    "OP one of = != < <= > >=, e.g. 'subscription.product.*.value>40' or "
    "'*.start_date>=2024-01-01'; PATH alone: the field exists. Numbers compare numerically, "
    'ISO dates as dates, quoted values ("40") as text. Repeat for AND (at most '
    "idxr.max_search_filters() conditions, see idxr_pg.search.MAX_FILTERS)."
)


STALE_MARK = "updating"
"""Shown in the `stale` column for an entity with queued changes not indexed yet."""


def _columns(measure: str) -> tuple[Column, ...]:
    return (
        Column("#", justify="right"),
        Column(measure, justify="right", no_wrap=True),
        Column("entity", no_wrap=True),
        Column("path", fold=True),  # path and value wrap when the terminal is narrow
        Column("value", max_width=VALUE_WIDTH),
        Column("stale", no_wrap=True),
    )


def _hit_row(rank: int, hit: SearchHit) -> list[object]:
    # A chunked field shows the chunk that matched (JSON output has both).
    shown = hit.value if hit.chunk_text is None else hit.chunk_text
    value = " ".join(shown.split())  # one line per result
    if len(value) > VALUE_WIDTH:
        value = value[: VALUE_WIDTH - 1] + "…"
    measure = hit.score if hit.score is not None else hit.distance
    return [
        rank,
        "" if measure is None else f"{measure:.4f}",
        f"{hit.entity_kind}/{hit.entity_id}",
        hit.path if hit.chunk is None else f"{hit.path} (chunk {hit.chunk})",
        value,
        STALE_MARK if hit.stale else "",
    ]


def _show(hits: Sequence[SearchHit], as_json: bool, title: str, measure: str = "distance") -> None:
    print_listing(
        list(enumerate(hits, 1)),
        as_json=as_json,
        to_json=lambda ranked: ranked[1].to_dict(),
        empty="no results",
        columns=_columns(measure),
        to_row=lambda ranked: _hit_row(*ranked),
        title=title,
    )


@click.command("search")
@click.argument("text")
@click.option(
    "--path",
    metavar="LQUERY",
    default=None,
    help="Only fields whose path matches this lquery, e.g. 'subscription.product.*' or "
    "'*.description'.",
)
@click.option("--kind", default=None, help="Only entities of this kind.")
@count_option("-k", int, 10, "How many results (1-1000).")
@click.option(
    "--entities",
    is_flag=True,
    help="One row per entity (its best-matching field) instead of one row per field.",
)
@click.option("--where", "where", multiple=True, metavar="CONDITION", help=WHERE_HELP)
@click.option(
    "--hybrid",
    is_flag=True,
    help="Fuse full-text search over the words of TEXT with the vector search (reciprocal "
    "rank fusion, idxr.hybrid_search): finds rare exact terms (part numbers, names) as well "
    "as paraphrases. Results are ordered by score, higher is better.",
)
@click.option(
    "--lexical",
    is_flag=True,
    help="Full-text search alone (idxr.text_search): the words of TEXT, no model is loaded.",
)
@click.option(
    "--weights",
    metavar="NAME=NUMBER,...",
    default=None,
    help="With --hybrid: weights of the fused lists, e.g. 'vector=1,lexical=0.5,exact=1,rrf_k=60' "
    "(the defaults are 1, 1, 1 and 60).",
)
@json_flag("Print the results as JSON.")
@pass_app
def search_command(
    app: AppContext,
    text: str,
    path: str | None,
    kind: str | None,
    k: int,
    entities: bool,
    where: tuple[str, ...],
    hybrid: bool,
    lexical: bool,
    weights: str | None,
    as_json: bool,
) -> None:
    """Find the fields (or entities) closest in meaning to TEXT.

    TEXT is embedded with the configured model, which must be the one the index was built
    with, and compared by cosine distance (0 = same meaning) with every indexed text field.
    With --hybrid, full-text matches of its words are fused in; with --lexical, only those.
    The stale column says "updating" for an entity with changes not indexed yet.
    A long text indexed in chunks shows once, as "PATH (chunk N)" with the chunk that
    matched (--json: "chunk" and "chunk_text" beside the whole "value").
    """
    from idxr_pg.search import SearchError, parse_weights, search

    if weights is not None and not hybrid:
        raise SearchError("--weights applies to --hybrid search only")
    hits = search(
        text,
        path=path,
        kind=kind,
        k=k,
        entities=entities,
        where=list(where) or None,
        hybrid=hybrid,
        lexical=lexical,
        weights=parse_weights(weights) if weights is not None else None,
        database_url=app.database_url,
        config=app.config,
    )
    what = "entities" if entities else "fields"
    if hybrid or lexical:
        how = "hybrid" if hybrid else "full-text"
        _show(hits, as_json, f"{what} best matching {text!r} ({how})", measure="score")
    else:
        _show(hits, as_json, f"{what} nearest to {text!r}")


@click.command("similar")
@click.argument("kind")
@click.argument("entity_id")
@click.argument("path")
@count_option("-k", int, 10, "How many entities (1-1000).")
@click.option(
    "--path-filter",
    metavar="LQUERY",
    default=None,
    help="Only compare with fields whose path matches this lquery (e.g. '*.description').",
)
@json_flag("Print the results as JSON.")
@pass_app
def similar_command(
    app: AppContext,
    kind: str,
    entity_id: str,
    path: str,
    k: int,
    path_filter: str | None,
    as_json: bool,
) -> None:
    """Find the entities closest to one field of an entity (search by example).

    Uses the stored vector of field PATH of entity KIND/ENTITY_ID (no model is loaded); the
    example entity itself is left out. Example: idxr-pg similar product 42 product.description
    """
    from idxr_pg.search import similar_to

    hits = similar_to(
        kind, entity_id, path, k, path_filter=path_filter, database_url=app.database_url
    )
    _show(hits, as_json, f"entities similar to {kind} {entity_id} {path}")


COMMANDS = [search_command, similar_command]
