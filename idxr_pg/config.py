"""Settings from the environment (IDXR_*) and the YAML entity/embedding config file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from idxr_pg.errors import IdxrError

if TYPE_CHECKING:
    from idxr_pg.runtime.windows import TimeWindow

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_CONFIG_PATH = Path("idxr.yaml")
DEFAULT_MODEL = "all-MiniLM-L6-v2"
"""The embedding model when none is configured (bundled; `idxr_pg.embedding.resolve` finds it).

Defined here, the one owner, because the settings default needs it and the embedding package
already imports this module (the other direction would be an import cycle)."""
DEFAULT_MODEL_DIMENSIONS = 384

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_KIND_NAME = re.compile(r"^[A-Za-z0-9_]{1,63}$")
_INTERVAL = re.compile(r"^every\s+(\d+)\s*(s|m|h|d)$")
MIN_REFRESH_INTERVAL = 1
"""Shortest 'every <interval>' refresh policy, in seconds (0 would refresh in a busy loop)."""
_INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(IdxrError):
    """The config file is missing, unreadable or invalid; the message names file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


BACKEND_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("float32", "bfloat16"),
    "onnx": ("float32", "int8"),
}
"""The precisions each inference backend runs (``embedding.backend`` / ``embedding.precision``)."""


LongTexts = Literal["chunk", "truncate"]


DEFAULT_CHUNK_TOKENS = 128
"""Chunk size, measured on bench/quality.py (docs/benchmarks.md, "Chunking"): 128 tokens with
an overlap of 32 scored nDCG@10 0.649 against 0.557 for 256/32 and 0.495 truncated."""


class ChunkingSettings(_Strict):
    """What happens to an embeddable text longer than ``tokens`` (bounded by the model's
    window): ``chunk`` splits it on the model tokenizer's boundaries into overlapping chunks of
    at most ``tokens`` tokens (the path prefix included), each embedded into a vector of its
    own; ``truncate`` embeds its start only (``embedding.truncation`` says which part)."""

    long_texts: LongTexts = "chunk"
    tokens: Annotated[int, Field(ge=16, le=8192)] | None = Field(
        DEFAULT_CHUNK_TOKENS,
        description="most tokens of one embedded text before it is chunked, and of each "
        "chunk (at most the model's window; null: the window)",
    )
    overlap: Annotated[int, Field(ge=0, le=4096)] = Field(
        32, description="tokens each chunk repeats from the end of the one before"
    )
    max_chunks: Annotated[int, Field(gt=0, le=1000)] = Field(
        64, description="most chunks of one field; the text beyond them is not embedded"
    )

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, value: int, info: ValidationInfo) -> int:
        tokens = info.data.get("tokens")
        if tokens is not None and value >= tokens // 2:
            raise ValueError(f"overlap ({value}) must be less than half of tokens ({tokens})")
        return value


class ChunkRule(_Strict):
    """Chunking for the paths of a kind that match ``paths`` (an lquery); the settings it
    leaves out come from ``embedding.chunking``. The first matching rule applies."""

    paths: str = Field("*", description="lquery of the paths the rule applies to")
    long_texts: LongTexts | None = None
    tokens: Annotated[int, Field(ge=16, le=8192)] | None = None
    overlap: Annotated[int, Field(ge=0, le=4096)] | None = None
    max_chunks: Annotated[int, Field(gt=0, le=1000)] | None = None

    @field_validator("paths")
    @classmethod
    def _paths_pattern(cls, value: str) -> str:
        from idxr_pg.records.lquery import LqueryError, compile_lquery

        try:
            compile_lquery(value)
        except LqueryError as exc:
            raise ValueError(str(exc)) from None
        return value


class EmbeddingSettings(_Strict):
    """How texts are turned into vectors."""

    model: str = Field(
        DEFAULT_MODEL,
        description="'all-MiniLM-L6-v2' (bundled, offline), a local sentence-transformers "
        "model directory, or a model name already in the local Hugging Face cache.",
    )
    dimensions: Annotated[int, Field(gt=0, le=16000)] | None = Field(
        None, description="vector size; default: read from the model (384 for the default)"
    )
    device: str | None = Field(None, description="cuda, cpu, ... (default: CUDA when present)")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto",
        description="inference engine: torch (PyTorch), onnx (ONNX Runtime, CPU only, an export "
        "of the model built once into the idxr-pg cache directory); auto: the fastest one whose "
        "vectors stay within 0.99 cosine of float32 on this machine's CPU (docs/benchmarks.md)",
    )
    precision: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto",
        description="float32 or bfloat16 (torch), float32 or int8 (onnx, int8: dynamically "
        "quantized weights); auto: chosen with the backend from the CPU's flags",
    )
    max_batch_size: Annotated[int, Field(gt=0, le=4096)] = 32
    safe_margin_percent: Annotated[float, Field(ge=0, lt=100)] = 10.0
    fallback_max_tokens: Annotated[int, Field(gt=0)] = 512
    truncation: Literal["end", "middle_out"] = "end"
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    max_attempts: Annotated[int, Field(gt=0, le=20)] = 3

    @field_validator("precision")
    @classmethod
    def _precision_of_backend(cls, value: str, info: ValidationInfo) -> str:
        backend = info.data.get("backend", "auto")
        allowed = BACKEND_PRECISIONS.get(backend)
        if allowed is not None and value != "auto" and value not in allowed:
            raise ValueError(
                f"precision {value!r} does not exist for backend {backend!r}: use "
                f"{' or '.join(('auto', *allowed))}"
            )
        return value


class WatchedTable(_Strict):
    """Another table whose changes re-index the entity."""

    table: str
    key: str = Field(description="column, or SQL expression over the row, yielding the entity key")
    columns: list[str] | None = Field(
        None, description="columns the entity reads (default: all); other updates are ignored"
    )
    trusted_key: bool = Field(
        False,
        description="the key expression may call functions outside pg_catalog and volatile "
        "ones, read views and row-secured tables: all of which then run as the installer on "
        "every write (vouch for their owners)",
    )

    @field_validator("table")
    @classmethod
    def _qualified_table(cls, value: str) -> str:
        return validate_table_name(value)


class EntityConfig(_Strict):
    """One entity kind: a Pydantic model fed from a source table."""

    name: str
    model: str = Field(description="dotted import path 'package.module:ClassName'")
    table: str
    key: str
    document: str | None = Field(
        None,
        description="SQL returning (key, jsonb document) for keys = ANY(%(keys)s); "
        "default: the row itself as JSON",
    )
    columns: list[str] | None = None
    watch: list[WatchedTable] = Field(default_factory=list)
    refresh: str = "on_change"
    window: str | None = Field(
        None,
        description="off-peak window 'HH:MM-HH:MM' in UTC (may cross midnight, e.g. "
        "'22:00-06:00'): the worker processes the kind only inside it; changes accumulate "
        "outside it",
    )
    text_search: str | None = Field(
        None,
        description="PostgreSQL text search configuration (language) of the kind's full-text "
        "index, e.g. 'simple' or 'english' (default: idxr.default_text_search_config(), "
        "'simple'); lexical and hybrid search use it",
        pattern=r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$",
    )
    composite: str | None = Field(
        None,
        description="template over the entity's fields, e.g. '{title}\\n{body}': its text is "
        "indexed and embedded as one more record at the kind's root path, so entity search "
        "also compares the query with the entity as a whole",
    )
    chunking: list[ChunkRule] = Field(
        default_factory=list,
        description="chunking of the kind's long texts by path pattern, first match wins, "
        "e.g. [{paths: 'article.body', tokens: 128}, {paths: '*.code', long_texts: truncate}] "
        "(default: embedding.chunking)",
    )
    max_depth: Annotated[int, Field(gt=0)] = 32
    max_records: Annotated[int, Field(gt=0)] = 10_000
    exclude_paths: list[str] = Field(
        default_factory=list,
        description="lquery patterns of paths never indexed, e.g. 'user.password' or "
        "'*.internal_notes.*' (fields marked Field(exclude=True) are never indexed either)",
    )
    trusted_source: bool = Field(
        False,
        description="the table may be a view, materialized view or foreign table: its "
        "definition (and the functions it calls) then runs as the worker's role",
    )
    allow_row_security: bool = Field(
        False,
        description="the kind's tables may have ROW LEVEL SECURITY: the index then holds every "
        "row, also those the policies hide (the worker reads with row_security = off, so it "
        "needs BYPASSRLS or to own the tables)",
    )
    notify: bool = Field(
        True,
        description="capture triggers send pg_notify per statement; false: the worker finds "
        "changes by polling (NOTIFY serialises the commits of concurrent writers)",
    )
    on_schema_change: Literal["warn", "reindex"] = Field(
        "warn",
        description="when the model changed since the kind's index was built: 'warn' logs "
        "what changed at worker start (run `idxr-pg plan`/`reindex` yourself); 'reindex' "
        "makes the worker run `idxr-pg reindex KIND` at its start before serving the kind",
    )

    @field_validator("name")
    @classmethod
    def _kind_name(cls, value: str) -> str:
        if not _KIND_NAME.match(value):
            raise ValueError("must be 1-63 letters, digits or underscores (it is an LTree label)")
        return value

    @field_validator("composite")
    @classmethod
    def _composite_template(cls, value: str | None) -> str | None:
        if value is not None:
            from idxr_pg.records.composite import CompositeError, template_fields

            try:
                template_fields(value)
            except CompositeError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("exclude_paths")
    @classmethod
    def _exclude_patterns(cls, value: list[str]) -> list[str]:
        from idxr_pg.records.lquery import LqueryError, compile_lquery

        for index, pattern in enumerate(value):
            try:
                compile_lquery(pattern)
            except LqueryError as exc:
                raise ValueError(f"exclude_paths[{index}]: {exc}") from None
        return value

    @field_validator("model")
    @classmethod
    def _model_path(cls, value: str) -> str:
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr:
            raise ValueError("must look like 'package.module:ClassName'")
        return value

    @field_validator("table")
    @classmethod
    def _qualified_table(cls, value: str) -> str:
        return validate_table_name(value)

    @field_validator("key")
    @classmethod
    def _key_column(cls, value: str) -> str:
        if not is_identifier(value):
            raise ValueError("must be a column name")
        return value

    @field_validator("watch")
    @classmethod
    def _watch_keys(cls, value: list[WatchedTable], info: ValidationInfo) -> list[WatchedTable]:
        for index, watched in enumerate(value):
            problem = sql_expression_problem(watched.key)
            if problem:
                name = info.data.get("name", "?")
                raise ValueError(
                    f"entity {name!r}, watch[{index}] ({watched.table}): key {watched.key!r} "
                    f"is not one SQL expression: {problem}"
                )
        return value

    @field_validator("refresh")
    @classmethod
    def _refresh_policy(cls, value: str) -> str:
        refresh_interval_seconds(value)
        return value

    @property
    def refresh_interval(self) -> int | None:
        """Seconds between refreshes for 'every <interval>', else None."""
        return refresh_interval_seconds(self.refresh)

    @field_validator("window")
    @classmethod
    def _window(cls, value: str | None) -> str | None:
        from idxr_pg.runtime.windows import WindowError, parse_window

        if value is None:
            return None
        try:
            parse_window(value)
        except WindowError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def time_window(self) -> TimeWindow | None:
        """The parsed off-peak window (None: any time)."""
        from idxr_pg.runtime.windows import parse_window

        return None if self.window is None else parse_window(self.window)


class WorkerSettings(_Strict):
    batch_size: Annotated[int, Field(gt=0, le=10_000)] = 64
    poll_interval: Annotated[float, Field(gt=0)] = 5.0
    lease_seconds: Annotated[int, Field(gt=0)] = 300
    max_attempts: Annotated[int, Field(gt=0, le=100)] = 5
    backoff_base_seconds: Annotated[float, Field(ge=0)] = 2.0
    backoff_max_seconds: Annotated[float, Field(gt=0)] = 600.0
    # --once / refresh: exit non-zero once the database stayed unreachable this long (the
    # daemon retries forever).
    give_up_after_seconds: Annotated[float, Field(gt=0)] = 60.0
    # A batch running longer than this stops having its leases extended: they expire and
    # another worker takes the entities over (the stalled one's late write is refused).
    stall_timeout_seconds: Annotated[float, Field(gt=0)] = 1800.0
    # Prepare (load … embed) the next claimed batch in a helper thread while this one is
    # written (issue 14): 1.25x on 2 cores with bf16 (docs/benchmarks.md, Throughput, third
    # pass). False: each batch prepared and written in turn, on one connection.
    overlap: bool = True


DEFAULT_BACKFILL_BATCH_SIZE = 256
"""Entities per batch of the jobs that walk a whole kind (`BackfillSettings`)."""


class BackfillSettings(_Strict):
    """The jobs that walk a whole kind: ``backfill``, ``reindex`` (and its ``plan``) and
    ``versions build``. Their batches are larger than the worker's: a batch is one embedding
    call, and a bigger one sorts more texts by length (less padding) and spreads each batch's
    fixed work over more entities (issue 14: 256 against 64 indexed a 20,000-entity initial load
    9% faster on 2 cores; docs/benchmarks.md, Throughput, fourth pass). Lower it for very large
    documents: two batches of documents are in memory at once (the overlap)."""

    batch_size: Annotated[int, Field(gt=0, le=10_000)] = DEFAULT_BACKFILL_BATCH_SIZE


class IndexSettings(_Strict):
    """How the HNSW index of the configured model's vector size is built. Applied by
    ``idxr-pg migrate`` (whose ``--index-storage``/``--hnsw-m``/``--hnsw-ef-construction``
    override it); a key left out keeps what the database records (at first: halfvec, 16, 64;
    an index that predates the option: vector). A change rebuilds the index concurrently:
    search answers throughout."""

    storage: Literal["vector", "halfvec"] | None = Field(
        None,
        description="halfvec (the default): the index holds float16, about 0.57x the size of "
        "vector (float32) and cheaper to insert into, recall@10 within 0.01 (docs/benchmarks.md)"
        ". The column and the distances returned stay float32 either way",
    )
    m: Annotated[int, Field(ge=2, le=100)] | None = Field(
        None, description="HNSW m: neighbours per node (pgvector's default 16)"
    )
    ef_construction: Annotated[int, Field(ge=4, le=1000)] | None = Field(
        None,
        description="HNSW ef_construction: candidates kept while inserting (pgvector's default "
        "64; at least twice m)",
    )

    @field_validator("ef_construction")
    @classmethod
    def _ef_construction_of_m(cls, value: int | None, info: ValidationInfo) -> int | None:
        m = info.data.get("m")
        if value is not None and m is not None and value < 2 * m:
            raise ValueError(f"ef_construction ({value}) must be at least twice m ({m})")
        return value


class IdxrConfig(_Strict):
    """The whole YAML config file."""

    entities: list[EntityConfig] = Field(default_factory=list)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)

    @field_validator("entities")
    @classmethod
    def _unique_names(cls, value: list[EntityConfig]) -> list[EntityConfig]:
        names = [entity.name for entity in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"entity names must be unique; repeated: {', '.join(duplicates)}")
        return value

    def entity(self, name: str) -> EntityConfig:
        for entity in self.entities:
            if entity.name == name:
                return entity
        known = ", ".join(e.name for e in self.entities) or "none configured"
        raise ConfigError(f"unknown entity kind {name!r} (known: {known})")


class Settings(BaseSettings):
    """Process settings from the environment: IDXR_DATABASE_URL, IDXR_CONFIG."""

    model_config = SettingsConfigDict(env_prefix="IDXR_", extra="ignore")

    database_url: str = Field(
        default_factory=lambda: os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)
    )
    config: Path = DEFAULT_CONFIG_PATH


def is_identifier(name: str) -> bool:
    """A plain SQL identifier (letters, digits, ``_``, ``$``; not starting with a digit or
    ``$``): what config table, key and column names are, and what needs no expression parsing."""
    return bool(_IDENTIFIER.match(name))


def sql_expression_problem(text: str) -> str | None:
    """Why ``text`` cannot be one SQL expression, or None (a lexical check, nothing executed).

    Outside string literals (``'...'``, ``E'...'``) and quoted identifiers (``"..."``) it
    refuses comments (``--``, ``/*``), ``;``, dollar quoting or parameters (``$``), and
    parentheses that do not balance; an unterminated literal or identifier is refused too.
    What passes is then checked against the catalog, without running it, at trigger install.
    """
    depth = 0
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in "'\"":
            escapes = (
                char == "'"
                and i > 0
                and text[i - 1] in "eE"
                and (i == 1 or not (text[i - 2].isalnum() or text[i - 2] in "_$"))
            )
            i += 1
            while True:
                if i >= n:
                    what = "string literal" if char == "'" else "quoted identifier"
                    return f"unterminated {what}"
                if escapes and text[i] == "\\":
                    i += 2
                    continue
                if text[i] == char:
                    if i + 1 < n and text[i + 1] == char:  # doubled quote
                        i += 2
                        continue
                    break
                i += 1
        elif text.startswith("--", i) or text.startswith("/*", i):
            return f"comments ({text[i : i + 2]!r}) are not allowed"
        elif char == ";":
            return "';' (a second statement) is not allowed"
        elif char == "$" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            return "dollar quoting and parameters ('$') are not allowed"
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return "unbalanced parentheses (a ')' closes nothing)"
        i += 1
    if depth:
        return f"unbalanced parentheses ({depth} '(' not closed)"
    return None


def validate_table_name(value: str) -> str:
    parts = value.split(".")
    if len(parts) > 2 or not all(is_identifier(part) for part in parts):
        raise ValueError("must be 'table' or 'schema.table' (plain identifiers)")
    return value


def refresh_interval_seconds(policy: str) -> int | None:
    """Parse a refresh policy; returns the interval for 'every N<s|m|h|d>', else None."""
    if policy in ("on_change", "manual"):
        return None
    match = _INTERVAL.match(policy.strip())
    if not match:
        raise ValueError("must be 'on_change', 'manual' or 'every <N><s|m|h|d>' (e.g. 'every 5m')")
    seconds = int(match.group(1)) * _INTERVAL_UNITS[match.group(2)]
    if seconds < MIN_REFRESH_INTERVAL:
        raise ValueError(
            f"{policy.strip()!r}: the interval must be at least {MIN_REFRESH_INTERVAL} second "
            "(e.g. 'every 30s'); an interval of 0 would refresh continuously"
        )
    return seconds


def _format_location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: dict[str, Any]) -> str:
    where = _format_location(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required key is missing"
    given = error.get("input")
    shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
    return f"{where}: {error['msg']} (got {shown})"


def parse_config(data: Any, source: str) -> IdxrConfig:
    """Validate already-parsed YAML; errors name the source, each bad key and what was expected."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return IdxrConfig.model_validate(data)
    except ValidationError as exc:
        lines = "\n".join(f"  - {_describe(err)}" for err in exc.errors())
        raise ConfigError(f"{source}: invalid idxr-pg config:\n{lines}") from None


def load_config(path: Path | str | None = None, *, required: bool = False) -> IdxrConfig:
    """Read the YAML config (explicit path, else IDXR_CONFIG, else ./idxr.yaml).

    A missing default file yields an empty config unless ``required``; a missing explicit
    file is always an error.
    """
    explicit = path is not None or "IDXR_CONFIG" in os.environ
    config_path = Path(path) if path is not None else Settings().config
    if not config_path.exists():
        if explicit or required:
            raise ConfigError(
                f"{config_path}: config file not found (set --config or IDXR_CONFIG, "
                "or create it with `idxr-pg init`)"
            )
        return IdxrConfig()
    try:
        data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{config_path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc.strerror}") from None
    return parse_config(data, str(config_path))
