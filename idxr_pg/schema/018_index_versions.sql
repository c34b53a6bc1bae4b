-- idxr-pg revision 0008: index versions per entity kind (issue 15).
-- Revisioned: Alembic revision 0008 runs this file once; sql/install.sql runs it too, so every
-- statement is idempotent.
--
-- * idxr.index_versions: the registry. One row per (kind, version): the model that embeds it
--   (name, version, dimensions, backend/precision), the kind's schema fingerprint when it was
--   created, its state (building -> active -> retired) and its build stats. At most one active
--   and one building version per kind.
-- * idxr.search_index keeps the ACTIVE version's rows of every kind (SQL users query it as
--   before). Every other version's rows (one being built, or a retired one kept for rollback)
--   live in idxr.version_records; `idxr-pg versions activate` swaps a kind's rows between the
--   two in one transaction (idxr_pg/db/versions.py), so a search never sees a mix.
-- * idxr.version_pending: entities written to the active version while a version of their kind
--   is being built (the worker marks them in its write transaction); the worker and the build
--   re-run them through the building version's model, so application writes reach both.
-- * idxr.search_index.embedding becomes a bare `vector`: kinds of different models hold
--   vectors of different sizes side by side. The HNSW indexes are partial expression indexes,
--   one per vector size ((embedding::vector(N)) WHERE vector_dims(embedding) = N), created by
--   idxr.ensure_embedding_index (020_dimensions.sql, re-applied after this file); the one
--   index of earlier revisions is dropped here first (it cannot index an untyped column).
-- * Upgrade: every registered kind gets version 1, active, with the model recorded for it;
--   its rows stay where they are (they are the active version's).

CREATE TABLE IF NOT EXISTS idxr.index_versions (
    entity_kind        text NOT NULL,
    version            integer NOT NULL CHECK (version > 0),
    model_name         text NOT NULL,    -- the embedder's name (idxr.embedding_models)
    model_source       text NOT NULL,    -- what loads it: embedding.model / versions create --model
    model_version      text NOT NULL DEFAULT '',
    dimensions         integer NOT NULL CHECK (dimensions BETWEEN 1 AND 16000),
    backend            text,             -- torch / onnx (NULL: not recorded, before 0008)
    precision          text,             -- float32 / bfloat16 / int8
    schema_fingerprint text,             -- the kind's model fingerprint when the version began
    state              text NOT NULL DEFAULT 'building'
                       CHECK (state IN ('building', 'active', 'retired')),
    job_id             bigint REFERENCES idxr.jobs (id) ON DELETE SET NULL,  -- its build
    texts              bigint NOT NULL DEFAULT 0,        -- texts embedded by its build
    build_seconds      double precision,                 -- wall time of its build
    coverage           double precision,                 -- entities indexed / source rows
    created_at         timestamptz NOT NULL DEFAULT now(),
    activated_at       timestamptz,
    retired_at         timestamptz,
    PRIMARY KEY (entity_kind, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS index_versions_one_active
    ON idxr.index_versions (entity_kind) WHERE state = 'active';
CREATE UNIQUE INDEX IF NOT EXISTS index_versions_one_building
    ON idxr.index_versions (entity_kind) WHERE state = 'building';

-- The rows of every version that is not active; same columns as idxr.search_index.
CREATE TABLE IF NOT EXISTS idxr.version_records (
    entity_kind  text NOT NULL,
    version      integer NOT NULL,
    entity_id    text NOT NULL,
    path         ltree NOT NULL,
    value        text NOT NULL,
    value_type   idxr.value_type NOT NULL,
    content_hash text NOT NULL,
    embedding    vector,
    truncation   text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_kind, version, entity_id, path),
    FOREIGN KEY (entity_kind, version) REFERENCES idxr.index_versions ON DELETE CASCADE
);

-- Entities to re-run through a building version; `generation` moves on every new mark, so a
-- drain deletes only the marks it processed (a mark made meanwhile stays).
CREATE TABLE IF NOT EXISTS idxr.version_pending (
    entity_kind text NOT NULL,
    version     integer NOT NULL,
    entity_id   text NOT NULL,
    generation  bigint NOT NULL DEFAULT 1,
    marked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (entity_kind, version, entity_id),
    FOREIGN KEY (entity_kind, version) REFERENCES idxr.index_versions ON DELETE CASCADE
);

-- The column becomes a bare vector; the single HNSW index of earlier revisions goes first.
DROP INDEX IF EXISTS idxr.search_index_embedding_hnsw;
DO $$
BEGIN
    IF (SELECT atttypmod FROM pg_catalog.pg_attribute
         WHERE attrelid = 'idxr.search_index'::regclass AND attname = 'embedding') <> -1 THEN
        ALTER TABLE idxr.search_index ALTER COLUMN embedding TYPE vector;
    END IF;
END
$$;

-- Version 1 of every registered kind: the rows it has now, embedded by its recorded model.
INSERT INTO idxr.index_versions
    (entity_kind, version, model_name, model_source, model_version, dimensions,
     schema_fingerprint, state, activated_at, coverage)
SELECT ek.name, 1, em.name, em.name, em.version,
       coalesce((SELECT vector_dims(s.embedding) FROM idxr.search_index s
                  WHERE s.entity_kind = ek.name AND s.embedding IS NOT NULL LIMIT 1),
                em.dimensions),
       ek.schema_fingerprint, 'active', now(), NULL
  FROM idxr.entity_kinds ek
  JOIN idxr.embedding_models em ON em.name = ek.model_name
ON CONFLICT DO NOTHING;
