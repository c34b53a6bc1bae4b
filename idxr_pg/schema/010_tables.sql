-- idxr-pg tables: extensions, the schema, the value_type enum and every table with its indexes.
-- Revisioned: Alembic revision 0001 runs this file once (see idxr_pg/schema/__init__.py). A
-- later table change is a new file run by a new revision, never an edit here once released.
-- Statements are still idempotent (IF NOT EXISTS) so sql/install.sql can be re-run.

CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS ltree;
CREATE SCHEMA IF NOT EXISTS idxr;

DO $$
BEGIN
    CREATE TYPE idxr.value_type AS ENUM (
        'string', 'integer', 'float', 'boolean', 'uuid', 'datetime', 'date', 'time', 'decimal'
    );
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

-- Embedding models that have produced vectors in this database.
CREATE TABLE IF NOT EXISTS idxr.embedding_models (
    name          text PRIMARY KEY,
    version       text NOT NULL DEFAULT '',
    dimensions    integer NOT NULL CHECK (dimensions > 0),
    max_tokens    integer NOT NULL CHECK (max_tokens > 0),
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- Entity kinds known to this database, with the model that embeds them.
CREATE TABLE IF NOT EXISTS idxr.entity_kinds (
    name               text PRIMARY KEY,
    model_name         text REFERENCES idxr.embedding_models (name),
    source_table       text,
    refresh_policy     text NOT NULL DEFAULT 'on_change',
    schema_fingerprint text,
    last_refresh_at    timestamptz,   -- last time its queue was processed
    last_embedded_at   timestamptz,   -- last time one of its records was written
    registered_at      timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- The search index: one row per (entity_kind, entity_id, path). Column names are a contract.
CREATE TABLE IF NOT EXISTS idxr.search_index (
    entity_kind  text NOT NULL,
    entity_id    text NOT NULL,
    path         ltree NOT NULL,
    value        text NOT NULL,
    value_type   idxr.value_type NOT NULL,
    content_hash text NOT NULL,            -- hex sha256 of "{path}:{value}:{value_type}"
    embedding    vector,                   -- NULL for non-embeddable fields
    truncation   text,                     -- strategy applied to an over-long text, else NULL
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_kind, entity_id, path)
);
CREATE INDEX IF NOT EXISTS search_index_path_gist ON idxr.search_index USING gist (path);
CREATE INDEX IF NOT EXISTS search_index_entity ON idxr.search_index (entity_kind, entity_id);

-- Changed entity keys waiting to be (re-)indexed; filled by the capture triggers.
CREATE TABLE IF NOT EXISTS idxr.queue (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_kind     text NOT NULL,
    entity_id       text NOT NULL,
    source_table    text,
    operation       text,
    enqueued_at     timestamptz NOT NULL DEFAULT now(),
    not_before      timestamptz NOT NULL DEFAULT now(),  -- retry backoff
    attempts        integer NOT NULL DEFAULT 0,
    first_failed_at timestamptz,
    last_error      text
);
CREATE INDEX IF NOT EXISTS queue_ready ON idxr.queue (entity_kind, not_before, id);
CREATE INDEX IF NOT EXISTS queue_entity ON idxr.queue (entity_kind, entity_id);

-- Which worker is processing which entity, until when; the primary key makes it exclusive.
CREATE TABLE IF NOT EXISTS idxr.leases (
    entity_kind  text NOT NULL,
    entity_id    text NOT NULL,
    worker_id    text NOT NULL,
    leased_until timestamptz NOT NULL,
    PRIMARY KEY (entity_kind, entity_id)
);

-- Entities that kept failing, with a readable YAML payload; `idxr-pg errors retry` re-queues.
CREATE TABLE IF NOT EXISTS idxr.dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_kind     text NOT NULL,
    entity_id       text NOT NULL,
    stage           text NOT NULL,
    error_type      text NOT NULL,
    error_message   text NOT NULL,
    attempts        integer NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    payload         text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    retried_at      timestamptz
);
CREATE INDEX IF NOT EXISTS dead_letters_entity ON idxr.dead_letters (entity_kind, entity_id);

-- Content-addressed embedding cache: a text is embedded once per model.
CREATE TABLE IF NOT EXISTS idxr.embedding_cache (
    model      text NOT NULL,   -- embedder name + '@' + version
    text_hash  text NOT NULL,   -- hex sha256 of the (possibly truncated) embedding text
    embedding  vector NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, text_hash)
);

-- Long-running jobs (backfills) with their checkpoint and counts.
CREATE TABLE IF NOT EXISTS idxr.jobs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_type        text NOT NULL DEFAULT 'backfill',
    entity_kind     text NOT NULL,
    state           text NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted')),
    options         jsonb NOT NULL DEFAULT '{}',
    checkpoint      text,            -- last entity key completed
    total           bigint,
    done            bigint NOT NULL DEFAULT 0,
    embedded        bigint NOT NULL DEFAULT 0,
    records_written bigint NOT NULL DEFAULT 0,
    unchanged       bigint NOT NULL DEFAULT 0,
    failed          bigint NOT NULL DEFAULT 0,
    rate            double precision,  -- entities per second
    error           text,
    host            text,
    pid             integer,
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    resumed_from    bigint REFERENCES idxr.jobs (id) ON DELETE SET NULL,  -- job it continues
    deleted         bigint NOT NULL DEFAULT 0,
    skipped         bigint NOT NULL DEFAULT 0,
    cache_hits      bigint NOT NULL DEFAULT 0,
    records_deleted bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_kind_started ON idxr.jobs (entity_kind, started_at DESC);

-- Live workers and their heartbeats.
CREATE TABLE IF NOT EXISTS idxr.workers (
    worker_id    text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    entity_kinds text[] NOT NULL DEFAULT '{}',
    state        text NOT NULL DEFAULT 'running',
    processed    bigint NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- Capture triggers installed by `idxr-pg triggers install` (DDL built by
-- idxr_pg/capture/triggers.py). One row per (entity kind, source table): the trigger function
-- in the idxr schema that its four triggers (insert, update, delete, truncate) call.
-- `idxr-pg triggers drop` drops exactly these functions with CASCADE, which removes their
-- triggers and nothing else.
CREATE TABLE IF NOT EXISTS idxr.capture_triggers (
    function_name text PRIMARY KEY,          -- in schema idxr, takes no arguments
    entity_kind   text NOT NULL,
    source_table  text NOT NULL,             -- schema.table, as resolved at install
    readers       jsonb NOT NULL,            -- [{"origin", "key", "columns"}]: what is captured
    installed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS capture_triggers_kind ON idxr.capture_triggers (entity_kind);
