"""Entity kinds as the pipeline uses them: model class, source table, key and key type.

`resolve_kinds` turns the YAML `EntityConfig`\\ s into `RegisteredKind`\\ s (the Pydantic model
imported, the key column's SQL type read from the catalog); `register` records the kinds and
the embedding model in ``idxr.entity_kinds`` / ``idxr.embedding_models``.

The document of an entity is a JSON object validated into its model (`RegisteredKind.validate`);
loading it from the source table is `idxr_pg.db.source.load_documents`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from pydantic import BaseModel

from idxr_pg.app_imports import ApplicationImportError, import_application_module
from idxr_pg.config import EntityConfig, IdxrConfig
from idxr_pg.db import catalog, source
from idxr_pg.db import kinds as kinds_db
from idxr_pg.db import versions as versions_db
from idxr_pg.errors import IdxrError
from idxr_pg.indexing import schema_state
from idxr_pg.records.composite import template_fields
from idxr_pg.records.shape import ShapeChange

__all__ = [
    "RegisteredKind",
    "RegistryError",
    "import_model",
    "register",
    "resolve_kind",
    "resolve_kinds",
]

log = logging.getLogger(__name__)


class RegistryError(IdxrError):
    """An entity kind cannot be set up: its model, table or key is wrong (the message says which)."""


@dataclass(frozen=True)
class RegisteredKind:
    """One entity kind, ready for the pipeline."""

    config: EntityConfig
    model: type[BaseModel]
    schema: str
    table: str
    key_type: str
    """SQL type of the key column, as ``format_type`` spells it (e.g. ``integer``, ``uuid``)."""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def key(self) -> str:
        return self.config.key

    @property
    def source_table(self) -> str:
        """``schema.table`` as configured-resolved (unquoted, for messages and bookkeeping)."""
        return f"{self.schema}.{self.table}"

    @property
    def refresh(self) -> str:
        return self.config.refresh

    @property
    def refresh_interval(self) -> int | None:
        return self.config.refresh_interval

    def validate(self, document: Mapping[str, Any]) -> BaseModel:
        return self.model.model_validate(document)


def import_model(kind: str, dotted: str) -> type[BaseModel]:
    """Import ``'package.module:ClassName'``; errors name the kind and what went wrong."""
    module_name, _, attr = dotted.partition(":")
    try:
        module = import_application_module(module_name)
    except ApplicationImportError as exc:
        raise RegistryError(f"entity kind {kind!r}: {exc} (model {dotted!r})") from exc
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise RegistryError(
                f"entity kind {kind!r}: module {module_name!r} has no attribute {attr!r} "
                f"(model {dotted!r})"
            ) from None
    if not (isinstance(target, type) and issubclass(target, BaseModel)):
        raise RegistryError(
            f"entity kind {kind!r}: {dotted!r} is not a Pydantic model class "
            f"(got {type(target).__name__})"
        )
    return target


def resolve_kind(conn: psycopg.Connection, entity: EntityConfig) -> RegisteredKind:
    """Import the kind's model and look its table and key type up in the catalog."""
    model = import_model(entity.name, entity.model)
    with conn.transaction():
        return _resolve(conn, entity, model)


def _resolve(
    conn: psycopg.Connection, entity: EntityConfig, model: type[BaseModel]
) -> RegisteredKind:
    try:
        relation = catalog.resolve_table(conn, entity.table)
    except catalog.UnknownTableError:
        raise RegistryError(
            f"entity kind {entity.name!r}: table {entity.table!r} does not exist "
            "(or is not visible on the search_path)"
        ) from None
    if not relation.is_table and not entity.trusted_source:
        # A view (or foreign table) runs its owner's definition as the worker: refused unless
        # the config vouches for it.
        raise RegistryError(
            f"entity kind {entity.name!r}: table {entity.table!r} is {relation.description}; "
            "sources must be plain or partitioned tables (set trusted_source: true on the "
            "entity if you trust its owner with the worker's rights)"
        )
    if relation.row_security and not entity.allow_row_security:
        # The index would copy rows the policies hide (and the worker reads with
        # row_security = off, db/source.py): refused unless the config opts in.
        raise RegistryError(
            f"entity kind {entity.name!r}: table {relation.qualified} has row level security "
            "enabled, and idxr.search_index would show its readers every row the policies hide "
            "(set allow_row_security: true on the entity to index them anyway; the worker then "
            "needs BYPASSRLS or to own the table)"
        )
    columns = catalog.table_columns(conn, relation.oid)
    key_type = columns.get(entity.key)
    if key_type is None:
        raise RegistryError(
            f"entity kind {entity.name!r}: table {entity.table!r} has no column {entity.key!r} "
            "(the configured key)"
        )
    for column in entity.columns or ():
        if column not in columns:
            raise RegistryError(
                f"entity kind {entity.name!r}: table {entity.table!r} has no column "
                f"{column!r} (listed in columns)"
            )
    if entity.composite:
        unknown = [f for f in template_fields(entity.composite) if f not in model.model_fields]
        if unknown:
            raise RegistryError(
                f"entity kind {entity.name!r}: composite template {entity.composite!r} names "
                f"{unknown[0]!r}, which is not a field of {entity.model} (fields: "
                f"{', '.join(model.model_fields)})"
            )
    kind = RegisteredKind(
        config=entity, model=model, schema=relation.schema, table=relation.name, key_type=key_type
    )
    if entity.document:
        try:
            source.check_document_query(conn, kind)
        except psycopg.Error as exc:
            raise RegistryError(
                f"entity kind {entity.name!r}: the document SQL is invalid: "
                f"{exc.diag.message_primary or exc}"
            ) from None
    return kind


def resolve_kinds(
    conn: psycopg.Connection, config: IdxrConfig, names: Iterable[str] | None = None
) -> dict[str, RegisteredKind]:
    """The kinds named (default: all configured), by name; unknown names are a ConfigError."""
    entities = (
        [config.entity(name) for name in dict.fromkeys(names)]
        if names is not None
        else list(config.entities)
    )
    return {entity.name: resolve_kind(conn, entity) for entity in entities}


def _refuse_another_numeric_path(conn: psycopg.Connection, embedder: Any) -> None:
    """Same weights on another backend (``fingerprint+onnx-int8`` vs ``fingerprint``, see
    `idxr_pg.embedding.resolve.identity_version`) while the index holds vectors of the
    recorded one: refused, so that workers on machines whose CPUs pick different backends
    never mix their vectors in one index."""
    recorded = kinds_db.recorded_model_version(conn, embedder.name)
    version = str(embedder.version or "")
    if not recorded or recorded == version:
        return
    weights, _, path = version.partition("+")
    recorded_weights, _, recorded_path = recorded.partition("+")
    if weights != recorded_weights or not kinds_db.model_has_vectors(conn, embedder.name):
        return
    built = recorded_path or "torch"
    backend, _, precision = built.partition("-")
    fix = f"embedding.backend: {backend}" + (
        f", embedding.precision: {precision}" if precision else ""
    )
    raise RegistryError(
        f"embedding model {embedder.name!r}: the index holds vectors computed on the {built} "
        f"backend, and this process would add {path or 'torch'} ones: set {fix} in the config "
        "(on every worker), or empty the index of its kinds before re-indexing on the new backend"
    )


def register(
    conn: psycopg.Connection,
    kinds: Iterable[RegisteredKind],
    embedder: Any,
    *,
    model_source: str | None = None,
    embedders: Mapping[str, Any] | None = None,
) -> dict[str, ShapeChange]:
    """Record the embedding models and the kinds (refresh policy, model shape); one transaction.

    Each kind is embedded by ``embedders[kind]`` when given (the model of its active index
    version, when that is not the configured one), else by ``embedder``. A kind registered for
    the first time gets index version 1, active, with that model (``model_source``: what loads
    it, default its name). Refuses an embedder whose model or vector size differs from the
    kind's active version. Returns the kinds whose model changed since their index was built,
    with what changed (`idxr_pg.indexing.schema_state.reconcile`; logged here): existing rows
    keep their old shape until `idxr-pg reindex KIND`.
    """
    changes: dict[str, ShapeChange] = {}
    chosen = dict(embedders or {})
    kinds = list(kinds)
    with conn.transaction():
        # The configured embedder's numeric path is checked whenever this process would use
        # it: for a kind it embeds, or with no kind at all (a worker of every kind to come).
        if not kinds or any(chosen.get(kind.name, embedder) is embedder for kind in kinds):
            _refuse_another_numeric_path(conn, embedder)
        for kind in kinds:
            kind_embedder = chosen.get(kind.name, embedder)
            _check_active_version(conn, kind.name, kind_embedder)
            kinds_db.upsert_embedding_model(
                conn,
                kind_embedder.name,
                kind_embedder.version,
                kind_embedder.dimensions,
                kind_embedder.max_tokens,
            )
            kinds_db.upsert_entity_kind(
                conn, kind.name, kind_embedder.name, kind.source_table, kind.refresh
            )
            versions_db.ensure_first_version(
                conn,
                kind.name,
                model=kind_embedder.name,
                source=model_source or kind_embedder.name,
                model_version=str(kind_embedder.version or ""),
                dimensions=kind_embedder.dimensions,
                backend=getattr(kind_embedder, "backend", None),
                precision=getattr(kind_embedder, "precision", None),
                fingerprint=schema_state.current_schema(kind)[0],
            )
            _text_search(conn, kind)
            kinds_db.set_composite(conn, kind.name, kind.config.composite)
            change = schema_state.reconcile(conn, kind)
            if change:
                changes[kind.name] = change
                log.warning(
                    "entity kind %r is stale: model %s changed since its index was built (%s); "
                    "rows indexed before keep their old shape until re-indexed "
                    "(`idxr-pg plan %s`, then `idxr-pg reindex %s`)",
                    kind.name,
                    kind.config.model,
                    change.summary(),
                    kind.name,
                    kind.name,
                    extra={"entity_kind": kind.name, "schema_change": change.summary()},
                )
    return changes


def _check_active_version(conn: psycopg.Connection, kind: str, embedder: Any) -> None:
    """Refuse to index ``kind`` with a model other than its active index version's."""
    active = versions_db.active_version(conn, kind)
    if active is None:
        return
    if active.dimensions == embedder.dimensions and active.model_name == embedder.name:
        return
    if not kinds_db.kind_has_rows(conn, kind):  # nothing indexed yet: the version follows
        versions_db.set_model(
            conn,
            kind,
            active.version,
            model=embedder.name,
            model_version=str(embedder.version or ""),
            dimensions=embedder.dimensions,
        )
        return
    raise RegistryError(
        f"entity kind {kind!r}: embedding model {embedder.name!r} makes "
        f"{embedder.dimensions}-dimensional vectors but the kind's active index version "
        f"{active.version} is model {active.model_name!r} ({active.dimensions}-dimensional "
        f"vectors): configure that model, or build a version with this one "
        f"(`idxr-pg versions create {kind} --model ...`, then `versions activate`)"
    )


def _text_search(conn: psycopg.Connection, kind: RegisteredKind) -> None:
    """The kind's full-text index in its configured language (a no-op when it exists)."""
    try:
        with conn.transaction():
            kinds_db.set_text_search_config(conn, kind.name, kind.config.text_search)
    except psycopg.errors.UndefinedObject as exc:  # an unknown text search configuration
        raise RegistryError(
            f"entity kind {kind.name!r}: text_search {kind.config.text_search!r} is not a text "
            f"search configuration of this database ({exc.diag.message_primary}); see "
            "`SELECT cfgname FROM pg_ts_config`"
        ) from None
