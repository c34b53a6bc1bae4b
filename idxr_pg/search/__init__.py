"""Similarity search from Python: embed the query with the index's model, run the SQL search.

``idxr_pg.search("text", path="subscription.*", kind="subscription", k=10)`` returns
`SearchHit`\\ s, nearest first. The SQL functions (``idxr.search``, ``idxr.search_entities``,
``idxr.similar_to`` in ``idxr_pg/schema/040_search.sql``, called from `idxr_pg.db.search`) do
the work; this module validates
the arguments, refuses an index built by another model or vector size, and embeds the query.

Structured filters (``where=``) restrict results to entities with a typed field meeting a
condition, e.g. ``where=["subscription.product.*.value>40", "subscription.start_date>=2024-01-01"]``
(see `parse_where`), or `Filter` objects.

This module is also callable: ``idxr_pg.search(...)`` is ``idxr_pg.search.search(...)``, so the
package attribute works whether or not this module was imported first (see the end of the file).
"""

from __future__ import annotations

import re
import sys
import threading
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from idxr_pg.config import EmbeddingSettings, IdxrConfig, Settings, load_config
from idxr_pg.db import search as queries
from idxr_pg.db.connection import DatabaseError, connect, redact
from idxr_pg.errors import IdxrError
from idxr_pg.records.record import ValueType

__all__ = [
    "MAX_FILTERS",
    "MAX_K",
    "Filter",
    "ModelMismatchError",
    "SearchError",
    "SearchHit",
    "parse_weights",
    "parse_where",
    "search",
    "search_vector",
    "similar_to",
]

MAX_K = 1000
"""Most results one search returns (the SQL functions enforce the same bound)."""

MAX_FILTERS = 32
"""Most structured filter conditions one search takes. The SQL function
``idxr.max_search_filters()`` is the authority (it refuses more); this mirrors it so a search
is refused before the model loads (a test asserts the two are equal)."""

OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "exists")


class SearchError(IdxrError):
    """A search argument is invalid (query text, path lquery, kind, k, filter, example)."""


class ModelMismatchError(SearchError):
    """The index was built by another embedding model or vector size than the configured one."""


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result: a field record (or an entity's best field) and its cosine distance.

    ``stale``: the entity has queued changes not indexed yet (a result being updated).
    ``score``: hybrid and lexical search only, higher is better (``distance`` is then None for
    a row that only the lexical list found).
    ``chunk``: for a field whose long text was split into chunks, the chunk that matched
    (0, 1, ...) and ``chunk_text`` its text (``value`` is the whole field); None otherwise.
    """

    entity_kind: str
    entity_id: str
    path: str
    value: str
    distance: float | None
    stale: bool = False
    score: float | None = None
    chunk: int | None = None
    chunk_text: str | None = None

    @property
    def similarity(self) -> float | None:
        """Cosine similarity, 1 - distance (1 = same direction)."""
        return None if self.distance is None else 1.0 - self.distance

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "similarity": self.similarity}


@dataclass(frozen=True, slots=True)
class Filter:
    """An entity must have a field whose path matches ``path`` (an lquery) and, when given,
    whose value type is ``type``, with a value for which ``value_at_path op value`` holds.

    ``op`` "exists" needs no value. Numbers compare numerically, ISO dates/datetimes as
    timestamps, HH:MM[:SS] as times, booleans as booleans, other strings as text; ``type``
    forces the comparison (e.g. ``type="string"`` to compare "40" as text).
    """

    path: str
    op: str = "exists"
    value: str | int | float | bool | None = None
    type: ValueType | str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise SearchError(
                f"filter on {self.path!r}: unknown operator {self.op!r} (one of {' '.join(OPERATORS)})"
            )
        if (self.op == "exists") != (self.value is None):
            raise SearchError(
                f"filter on {self.path!r}: "
                + (
                    "'exists' takes no value"
                    if self.op == "exists"
                    else f"{self.op!r} needs a value"
                )
            )
        if self.type is not None:
            try:
                object.__setattr__(self, "type", ValueType(self.type))
            except ValueError:
                known = ", ".join(v.value for v in ValueType)
                raise SearchError(
                    f"filter on {self.path!r}: unknown value type {self.type!r} (one of {known})"
                ) from None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "op": self.op}
        if self.value is not None:
            data["value"] = self.value
        if self.type is not None:
            data["type"] = ValueType(self.type).value
        return data


_WHERE = re.compile(
    r"""^\s*(?P<path>[^:<>=\s]+?)                    # an lquery has no ':', '<', '>', '='
        (?::(?P<type>[a-z]+))?                       # optional :value_type
        \s*(?:(?P<op><=|>=|!=|<>|=|<|>)\s*(?P<value>.*?))?\s*$""",
    re.VERBOSE,
)
_INTEGER = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")


def parse_where(expression: str) -> Filter:
    """Parse ``PATH[:TYPE] OP VALUE`` (or ``PATH[:TYPE]`` alone: the field exists).

    ``PATH`` is an lquery; ``OP`` one of = != < <= > >=; ``VALUE`` a number, true/false, or
    text (quote it, "40", to compare digits as text). Examples:
    ``subscription.product.*.value>40``, ``*.start_date>=2024-01-01``, ``*.status=active``,
    ``subscription.notes:string``.
    """
    match = _WHERE.match(expression)
    if not match or (match.group("op") and match.group("value") == ""):
        raise SearchError(
            f"cannot parse filter {expression!r}: expected PATH[:TYPE] OP VALUE with OP one of "
            "= != < <= > >= (e.g. 'subscription.product.*.value>40'), or PATH[:TYPE] alone"
        )
    op = match.group("op") or "exists"
    if op == "<>":
        op = "!="
    raw = match.group("value")
    value: str | int | float | bool | None = None
    if raw is not None:
        value = _parse_value(raw)
    return Filter(path=match.group("path"), op=op, value=value, type=match.group("type"))


def _parse_value(raw: str) -> str | int | float | bool:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if _INTEGER.match(raw):
        return int(raw)
    if _FLOAT.match(raw):
        return float(raw)
    return raw


WhereArg = str | Filter | Mapping[str, Any]


def _filters_json(where: WhereArg | Iterable[WhereArg] | None) -> list[dict[str, Any]] | None:
    if where is None:
        return None
    items: Iterable[WhereArg] = [where] if isinstance(where, str | Filter | Mapping) else where
    result: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, str):
            result.append(parse_where(item).to_json())
        elif isinstance(item, Filter):
            result.append(item.to_json())
        elif isinstance(item, Mapping):
            result.append(dict(item))  # validated by the database, with its message
        else:
            raise SearchError(f"filter {item!r}: expected a string, a Filter or a mapping")
    if len(result) > MAX_FILTERS:
        raise SearchError(f"at most {MAX_FILTERS} filters per search, got {len(result)}")
    return result or None


# --------------------------------------------------------------------------- checks


def _database_error(exc: psycopg.Error, url: str) -> IdxrError:
    """A user-facing error for a failed search statement."""
    diag = exc.diag
    message = (diag.message_primary or str(exc)).strip()
    if message.startswith("idxr: "):
        hint = f" ({diag.message_hint})" if diag.message_hint else ""
        return SearchError(message.removeprefix("idxr: ") + hint)
    if isinstance(
        exc,
        psycopg.errors.UndefinedFunction
        | psycopg.errors.UndefinedTable
        | psycopg.errors.UndefinedObject
        | psycopg.errors.InvalidSchemaName,
    ):
        return DatabaseError(
            f"the idxr search functions are missing in {redact(url)}: run `idxr-pg migrate` "
            f"({message})"
        )
    return DatabaseError(f"search failed in {redact(url)}: {message}")


def _validate(
    conn: psycopg.Connection,
    url: str,
    path: str | None,
    kind: str | None,
    k: int,
    filters: list[dict[str, Any]] | None,
) -> None:
    """Every argument check that needs no query vector: cheap, before the model loads."""
    if path is not None:
        if not path.strip():
            raise SearchError("the path filter is empty: give an lquery such as 'subscription.*'")
        try:
            queries.check_lquery(conn, path)
        except psycopg.errors.UndefinedObject as exc:  # no ltree: not set up at all
            raise _database_error(exc, url) from None
        except psycopg.Error as exc:
            raise SearchError(
                f"invalid path filter {path!r}: {exc.diag.message_primary or exc} "
                "(an lquery, e.g. 'subscription.product.*' or '*.description')"
            ) from None
    try:
        queries.check_arguments(conn, kind, k)
        if filters:
            queries.check_filters(conn, filters)
    except psycopg.Error as exc:
        raise _database_error(exc, url) from None


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise SearchError(f"k must be a whole number between 1 and {MAX_K}, got {k!r}")


def _check_model(conn: psycopg.Connection, embedder: Any, kind: str | None) -> None:
    """Refuse when the index's vectors come from another model or have another size."""
    dims, kinds = queries.index_models(conn, kind)
    configured = f"{embedder.name!r} ({embedder.dimensions} dimensions)"
    if dims is not None and dims != embedder.dimensions:
        raise ModelMismatchError(
            f"idxr.search_index holds {dims}-dimensional embeddings but the configured model "
            f"{configured} makes {embedder.dimensions}-dimensional ones: configure the model "
            "the index was built with (embedding.model), or rebuild the index with this one"
        )
    for name, model_name, version, model_dims in kinds:
        same_version = not version or not embedder.version or version == embedder.version
        if model_name != embedder.name or not same_version or model_dims not in (None, dims):
            if model_name == embedder.name and version and embedder.version:
                _check_numeric_path(name, version, embedder.version)
            built = f"{model_name!r}" + (f" version {version}" if version else "")
            raise ModelMismatchError(
                f"entity kind {name!r} was indexed with embedding model {built} but the "
                f"configured model is {configured} version {embedder.version}: distances "
                "between them are meaningless. Configure the model the index was built with, "
                f"or re-index: `idxr-pg backfill {name} --force`"
            )


def _check_numeric_path(kind: str, built: str, configured: str) -> None:
    """Same weights, another inference backend (the ``+onnx-int8`` part of the version, see
    `idxr_pg.embedding.resolve.identity_version`): refused, naming the settings to change."""
    built_weights, _, built_path = built.partition("+")
    weights, _, path = configured.partition("+")
    if built_weights != weights or built_path == path:
        return
    backend, _, precision = (built_path or "torch-").partition("-")
    fix = f"embedding.backend: {backend}" + (
        f", embedding.precision: {precision}" if precision else ""
    )
    raise ModelMismatchError(
        f"entity kind {kind!r} was indexed with the same model on the "
        f"{built_path or 'torch'} backend, but this query would be embedded with "
        f"{path or 'torch'}: vectors of different numeric paths are not mixed. Set {fix} "
        f"in the config, or re-index: `idxr-pg backfill {kind} --force`"
    )


def _hits(rows: Iterable[Sequence[Any]]) -> list[SearchHit]:
    return [
        SearchHit(
            kind,
            eid,
            path,
            value,
            None if distance is None else float(distance),
            bool(stale),
            None if score is None else float(score),
            chunk,
            chunk_text,
        )
        for kind, eid, path, value, distance, stale, score, chunk, chunk_text in rows
    ]


WEIGHT_KEYS = ("vector", "lexical", "exact", "rrf_k")
"""The keys of hybrid search weights (``idxr.hybrid_weights`` is the authority)."""


def _check_weights(weights: Mapping[str, float] | None) -> dict[str, float] | None:
    if weights is None:
        return None
    unknown = sorted(set(weights) - set(WEIGHT_KEYS))
    if unknown:
        raise SearchError(
            f"unknown hybrid weight {unknown[0]!r} (allowed: {', '.join(WEIGHT_KEYS)})"
        )
    return dict(weights)


def parse_weights(expression: str) -> dict[str, float]:
    """``vector=1,lexical=0.5`` → ``{"vector": 1.0, "lexical": 0.5}`` (the CLI's --weights)."""
    weights: dict[str, float] = {}
    for part in expression.split(","):
        name, sep, raw = part.partition("=")
        try:
            if not sep:
                raise ValueError
            weights[name.strip()] = float(raw)
        except ValueError:
            raise SearchError(
                f"cannot parse weights {expression!r}: expected NAME=NUMBER pairs separated by "
                f"commas, NAME one of {', '.join(WEIGHT_KEYS)} (e.g. 'vector=1,lexical=0.5')"
            ) from None
    return _check_weights(weights) or {}


# --------------------------------------------------------------------------- query embedding

_EMBEDDERS: dict[str, Any] = {}
_EMBEDDERS_LOCK = threading.Lock()


def _embedder(settings: EmbeddingSettings) -> Any:
    """The embedder of ``settings``, loaded once per process (loading takes seconds; a search
    after the first costs the query's embedding only)."""
    key = settings.model_dump_json()
    with _EMBEDDERS_LOCK:
        embedder = _EMBEDDERS.get(key)
        if embedder is None:
            from idxr_pg.embedding import load_embedder

            embedder = _EMBEDDERS[key] = load_embedder(settings)
    return embedder


def _embed_query(embedder: Any, settings: EmbeddingSettings, text: str) -> Any:
    """The query's vector, as the indexer embeds a text (truncation included); a short query on
    the torch backend runs on one thread (`idxr_pg.embedding.threads`)."""
    from idxr_pg.embedding import EmbeddingService, EmbedRequest
    from idxr_pg.embedding.threads import threads_for, torch_threads

    service = EmbeddingService(embedder, settings)
    count = None
    if getattr(embedder, "backend", None) == "torch":
        count = threads_for(embedder.count_tokens([text]))
    with torch_threads(count):
        return service.embed([EmbedRequest("search query", text)])[0].vector


# --------------------------------------------------------------------------- API


def search(
    text: str,
    path: str | None = None,
    kind: str | None = None,
    k: int = 10,
    *,
    entities: bool = False,
    where: WhereArg | Iterable[WhereArg] | None = None,
    hybrid: bool = False,
    lexical: bool = False,
    weights: Mapping[str, float] | None = None,
    database_url: str | None = None,
    config: IdxrConfig | None = None,
) -> list[SearchHit]:
    """The ``k`` field records nearest to ``text`` (with ``entities``: the ``k`` nearest
    entities, each with its best-matching field), nearest first.

    ``hybrid``: fuse full-text search over the words of ``text`` with the vector search
    (``idxr.hybrid_search``, reciprocal rank fusion; ``weights`` e.g.
    ``{"vector": 1, "lexical": 1, "exact": 1, "rrf_k": 60}``), best first by ``score``.
    ``lexical``: full-text search alone (``idxr.text_search``); no model is loaded.

    ``path`` is an lquery restricting the fields compared (e.g. ``'subscription.product.*'``);
    ``kind`` an entity kind; ``where`` structured filters (`parse_where` strings, `Filter`\\ s
    or ``{"path", "op", "value", "type"}`` mappings). The query is embedded with the model of
    ``config.embedding`` (default: the YAML config, see `load_config`), which must be the
    model the index was built with. Raises `SearchError` for bad input and
    `ModelMismatchError` for an index built by another model or vector size.
    """
    if not isinstance(text, str) or not text.strip():
        raise SearchError("the query text is empty: give the words to search for")
    _check_k(k)
    if hybrid and lexical:
        raise SearchError("choose hybrid or lexical search, not both")
    weights = _check_weights(weights)
    if weights and not hybrid:
        raise SearchError("weights apply to hybrid search only (hybrid=True)")
    filters = _filters_json(where)
    url = database_url or Settings().database_url
    if lexical:
        with connect(url, autocommit=True) as conn:
            _validate(conn, url, path, kind, k, filters)
            try:
                rows = queries.text_search(conn, text, path, kind, k, filters, entities=entities)
            except psycopg.Error as exc:
                raise _database_error(exc, url) from None
        return _hits(rows)
    configured = (config or load_config()).embedding
    with connect(url, autocommit=True) as conn:
        _validate(conn, url, path, kind, k, filters)
        if weights:
            try:
                queries.check_weights(conn, weights)
            except psycopg.Error as exc:
                raise _database_error(exc, url) from None
        # One snapshot for the active version read here and the rows searched below, so a
        # version switch committed meanwhile is seen by neither or both: the query is always
        # embedded with the model of the version it is compared with.
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            settings = _query_settings(conn, configured, kind)
            embedder = _embedder(settings)
            _check_model(conn, embedder, kind)
            vector = _embed_query(embedder, settings, text)
            if hybrid:
                try:
                    rows = queries.hybrid_search(
                        conn, text, vector, path, kind, k, filters, weights, entities=entities
                    )
                except psycopg.Error as exc:
                    raise _database_error(exc, url) from None
                return _hits(rows)
            return _run(conn, url, vector, path, kind, k, entities, filters)


def _query_settings(
    conn: psycopg.Connection, configured: EmbeddingSettings, kind: str | None
) -> EmbeddingSettings:
    """The embedding settings of the active index version searched: ``kind``'s, or the one
    model every kind's active version shares; ``configured`` when no version says otherwise.
    Kinds of different models cannot be searched together: the error says to name one."""
    from idxr_pg.db import versions as versions_db

    active = [
        v
        for v in versions_db.list_versions(conn, kind)
        if v.state == versions_db.ACTIVE and (kind is None or v.entity_kind == kind)
    ]
    models = {(v.model_name, v.dimensions): v for v in active}
    if len(models) > 1:
        listed = ", ".join(f"{v.entity_kind}: {v.model_name} ({v.dimensions})" for v in active)
        raise SearchError(
            f"the entity kinds are embedded by different models ({listed}): name the kind "
            "to search (kind=... / --kind)"
        )
    if not models:
        return configured
    version = next(iter(models.values()))
    default = _embedder(configured)
    if default.name == version.model_name and default.dimensions == version.dimensions:
        return configured
    return configured.model_copy(update={"model": version.model_source, "dimensions": None})


def search_vector(
    vector: Any,
    path: str | None = None,
    kind: str | None = None,
    k: int = 10,
    *,
    entities: bool = False,
    where: WhereArg | Iterable[WhereArg] | None = None,
    database_url: str | None = None,
) -> list[SearchHit]:
    """`search` with a query vector you embedded yourself with the index's model (a sequence
    of floats, a numpy array or a pgvector ``Vector``); no model is loaded."""
    _check_k(k)
    filters = _filters_json(where)
    url = database_url or Settings().database_url
    with connect(url, autocommit=True) as conn:
        _validate(conn, url, path, kind, k, filters)
        import numpy as np

        to_numpy = getattr(vector, "to_numpy", None)  # a pgvector.Vector read from the database
        array = np.asarray(to_numpy() if to_numpy else vector, dtype=np.float32)
        if array.ndim != 1 or not array.size:
            raise SearchError(
                f"the query vector must be a flat list of floats, got shape {array.shape}"
            )
        if not np.isfinite(array).all():
            raise SearchError("the query vector holds NaN or infinite components")
        if not array.any():
            raise SearchError(
                "the query vector is all zeros: it has no direction, so its cosine distance "
                "to every row is undefined (NaN)"
            )
        return _run(conn, url, array, path, kind, k, entities, filters)


def similar_to(
    kind: str,
    entity_id: str,
    path: str,
    k: int = 10,
    *,
    path_filter: str | None = None,
    database_url: str | None = None,
) -> list[SearchHit]:
    """The ``k`` other entities nearest to the stored vector of field ``path`` of entity
    ``(kind, entity_id)``, each with its nearest field; ``path_filter`` (lquery) restricts the
    fields compared. No model is loaded: the stored vector is the query."""
    _check_k(k)
    url = database_url or Settings().database_url
    with connect(url, autocommit=True) as conn:
        _validate(conn, url, path_filter, None, k, None)
        try:
            queries.check_ltree(conn, path)
        except psycopg.Error as exc:
            raise SearchError(f"invalid path {path!r}: {exc.diag.message_primary or exc}") from None
        try:
            rows = queries.similar_to(conn, kind, str(entity_id), path, k, path_filter)
        except psycopg.Error as exc:
            raise _database_error(exc, url) from None
    return _hits(rows)


def _run(
    conn: psycopg.Connection,
    url: str,
    vector: Any,
    path: str | None,
    kind: str | None,
    k: int,
    entities: bool,
    filters: list[dict[str, Any]] | None,
) -> list[SearchHit]:
    try:
        rows = queries.search(conn, vector, path, kind, k, filters, entities=entities)
    except psycopg.Error as exc:
        raise _database_error(exc, url) from None
    return _hits(rows)


class _CallableModule(types.ModuleType):
    """``idxr_pg.search`` is this module once imported (Python sets the package attribute to
    the submodule), so calling it must run `search`."""

    def __call__(self, *args: Any, **kwargs: Any) -> list[SearchHit]:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
