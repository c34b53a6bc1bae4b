-- Operations: what `idxr-pg status`, `stale` and `jobs` read, also for SQL users.
-- idxr.status: one row per entity kind known to the database (registered, indexed, queued
-- or dead-lettered). idxr.stale: the kinds whose queue holds unprocessed changes.
-- Both are plain views over the base tables; they count, so they scan the index once.
-- Re-applied after every upgrade (CREATE OR REPLACE); the tables live in 010_tables.sql,
-- 011_coalescing_queue.sql and 012_pause.sql (paused_at, which idxr.status shows as paused and
-- paused_since). Queued changes are the rows of idxr.queue plus the keys of
-- idxr.queue_batches (one row per bulk statement, expanded by the worker's next claim; its keys
-- are ready at once). Inline in both views, not a function: a function in a view runs with the
-- reader's rights, and idxr_reader may not read the queue tables.

-- 'every 5m' -> 5 minutes; NULL for 'on_change', 'manual' or anything else.
CREATE OR REPLACE FUNCTION idxr.refresh_interval(policy text)
RETURNS interval
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT make_interval(secs => m[1]::bigint * CASE m[2]
               WHEN 's' THEN 1 WHEN 'm' THEN 60 WHEN 'h' THEN 3600 ELSE 86400 END)
      FROM regexp_match(btrim(policy), '^every\s+(\d+)\s*(s|m|h|d)$') AS m
$$;

-- Per-kind counts of the index. A function rather than inline SQL in the view: a view that
-- reads search_index.embedding would pin its type, and idxr.set_embedding_dimensions must be
-- able to change vector(N) (a string-bodied SQL function records no column dependency).
CREATE OR REPLACE FUNCTION idxr.index_counts()
RETURNS TABLE (entity_kind text, indexed_entities bigint, indexed_records bigint,
               embedded_records bigint)
LANGUAGE sql
STABLE
AS $$
    SELECT entity_kind, count(DISTINCT entity_id), count(*) FILTER (WHERE chunk = 0),
           count(embedding) FILTER (WHERE chunk = 0)  -- fields (019_chunks.sql: chunk rows)
      FROM idxr.search_index
     GROUP BY entity_kind
$$;

CREATE OR REPLACE VIEW idxr.status AS
WITH queued_keys AS (
    SELECT entity_kind, entity_id, enqueued_at, not_before, attempts FROM idxr.queue
    UNION ALL
    SELECT b.entity_kind, k.id, b.enqueued_at, b.enqueued_at, 0
      FROM idxr.queue_batches AS b CROSS JOIN LATERAL unnest(b.entity_ids) AS k(id)
),
kinds AS (
    SELECT name AS entity_kind FROM idxr.entity_kinds
    UNION SELECT DISTINCT entity_kind FROM idxr.search_index
    UNION SELECT DISTINCT entity_kind FROM idxr.queue
    UNION SELECT DISTINCT entity_kind FROM idxr.queue_batches
    UNION SELECT DISTINCT entity_kind FROM idxr.dead_letters WHERE retried_at IS NULL
),
indexed AS (
    SELECT * FROM idxr.index_counts()
),
queued AS (
    SELECT entity_kind,
           count(*) AS queued_changes,
           count(DISTINCT entity_id) AS queued_entities,
           count(*) FILTER (WHERE attempts > 0) AS retrying_changes,
           min(enqueued_at) AS stale_since
      FROM queued_keys
     GROUP BY entity_kind
),
dead AS (
    SELECT entity_kind, count(*) AS dead_letters
      FROM idxr.dead_letters
     WHERE retried_at IS NULL
     GROUP BY entity_kind
)
SELECT k.entity_kind,
       ek.model_name,
       ek.source_table,
       COALESCE(ek.refresh_policy, 'on_change') AS refresh_policy,
       COALESCE(i.indexed_entities, 0) AS indexed_entities,
       COALESCE(i.indexed_records, 0) AS indexed_records,
       COALESCE(i.embedded_records, 0) AS embedded_records,
       COALESCE(q.queued_changes, 0) AS queue_depth,
       COALESCE(q.queued_entities, 0) AS queued_entities,
       COALESCE(q.retrying_changes, 0) AS retrying_changes,
       q.stale_since,
       now() - q.stale_since AS lag,
       ek.last_refresh_at,
       ek.last_embedded_at,
       COALESCE(d.dead_letters, 0) AS dead_letters,
       ek.paused_at IS NOT NULL AS paused,
       ek.paused_at AS paused_since,
       ek.schema_change IS NOT NULL AS schema_stale,
       ek.schema_change ->> 'summary' AS schema_change
  FROM kinds k
  LEFT JOIN idxr.entity_kinds ek ON ek.name = k.entity_kind
  LEFT JOIN indexed i USING (entity_kind)
  LEFT JOIN queued q USING (entity_kind)
  LEFT JOIN dead d USING (entity_kind);

COMMENT ON VIEW idxr.status IS
    'Per entity kind: indexed entities/records, queue depth and lag, last embedding, dead letters, paused, and whether the model changed since the index was built (schema_stale, schema_change).';

CREATE OR REPLACE VIEW idxr.stale AS
SELECT q.entity_kind,
       COALESCE(ek.refresh_policy, 'on_change') AS refresh_policy,
       idxr.refresh_interval(ek.refresh_policy) AS refresh_interval,
       count(*) AS queued_changes,
       count(DISTINCT q.entity_id) AS queued_entities,
       count(*) FILTER (WHERE q.not_before <= now()) AS ready_changes,
       min(q.enqueued_at) AS stale_since,
       now() - min(q.enqueued_at) AS lag,
       ek.last_refresh_at
  FROM (
        SELECT entity_kind, entity_id, enqueued_at, not_before, attempts FROM idxr.queue
        UNION ALL
        SELECT b.entity_kind, k.id, b.enqueued_at, b.enqueued_at, 0
          FROM idxr.queue_batches AS b CROSS JOIN LATERAL unnest(b.entity_ids) AS k(id)
  ) AS q
  LEFT JOIN idxr.entity_kinds ek ON ek.name = q.entity_kind
 GROUP BY q.entity_kind, ek.refresh_policy, ek.last_refresh_at;

COMMENT ON VIEW idxr.stale IS
    'Entity kinds with unprocessed changes: how many, since when, and their refresh policy.';

-- Privileges (re-applied after every upgrade, so they also cover functions added since).
-- PostgreSQL grants EXECUTE on every new function to PUBLIC: take it back for everything in
-- idxr, also for functions this role creates later (the capture functions of
-- `idxr-pg triggers install` revoke it themselves too). Two group roles (NOLOGIN, cluster-wide,
-- created once and left in place by uninstall) carry exactly what each side needs:
--   idxr_reader: USAGE on the schema, SELECT on idxr.search_index, the kind and model
--     registry (entity_kinds, embedding_models) and the idxr.status / idxr.stale views, EXECUTE on the search functions and their helpers (every function of
--     idxr that is SECURITY INVOKER and not a trigger function, except set_embedding_dimensions
--     and ensure_embedding_index(es)), and the index versions (idxr.index_versions, idxr.versions).
--     Whoever can SELECT idxr.search_index can read every indexed value of every kind.
--   idxr_worker: idxr_reader, plus SELECT/INSERT/UPDATE/DELETE on the idxr tables and USAGE on
--     their sequences. It gets no right on application tables: grant SELECT on the watched
--     tables to the worker's login role yourself.
-- Never granted to either: set_embedding_dimensions, ensure_embedding_index(es) and
-- set_embedding_index_options (they create HNSW indexes or say how: the owner's, via
-- `idxr-pg migrate` and `idxr-pg versions create`),
-- the SECURITY DEFINER capture functions (they run only as triggers), CREATE on the schema.
-- SECURITY DEFINER functions granted by name: idxr.is_stale to idxr_reader (the `stale` flag
-- of search results), idxr.text_term_stats to idxr_reader (the planner statistics of a kind's
-- full-text index, for lexical scoring), idxr.set_text_search_config to idxr_worker (a kind's
-- full-text index).
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA idxr FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA idxr REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

DO $$
DECLARE
    role_name text;
    fn regprocedure;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['idxr_reader', 'idxr_worker'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = role_name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
            EXCEPTION
                WHEN duplicate_object THEN NULL;  -- created meanwhile by a concurrent install
                WHEN insufficient_privilege THEN
                    RAISE WARNING 'idxr: cannot create role % (no CREATEROLE): its grants are skipped',
                        role_name;
            END;
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'idxr_reader') THEN
        GRANT USAGE ON SCHEMA idxr TO idxr_reader;
        GRANT SELECT ON idxr.search_index, idxr.search_fields, idxr.entity_kinds,
                         idxr.embedding_models, idxr.status, idxr.stale, idxr.index_versions,
                         idxr.versions, idxr.embedding_index_settings
                      TO idxr_reader;
        FOR fn IN
            SELECT p.oid::regprocedure
              FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'idxr'::regnamespace
               AND NOT p.prosecdef
               AND p.prorettype <> 'pg_catalog.trigger'::regtype
               AND p.proname NOT IN ('set_embedding_dimensions', 'ensure_embedding_index',
                                     'ensure_embedding_indexes', 'set_embedding_index_options')
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO idxr_reader', fn);
        END LOOP;
        -- A SECURITY DEFINER function readers get: whether an entity has queued changes
        -- (the `stale` column of search results), one boolean, no queue row itself.
        GRANT EXECUTE ON FUNCTION idxr.is_stale(text, text) TO idxr_reader;
        -- And the lexeme frequencies of a kind's full-text index (its pg_stats row, which only
        -- the index's owner can read), that lexical search uses instead of counting common words.
        GRANT EXECUTE ON FUNCTION idxr.text_term_stats(text) TO idxr_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'idxr_worker') THEN
        GRANT USAGE ON SCHEMA idxr TO idxr_worker;
        GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA idxr TO idxr_worker;
        GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA idxr TO idxr_worker;
        -- Registration builds a kind's full-text index through this SECURITY DEFINER function
        -- (the worker does not own idxr.search_index; 045_hybrid.sql).
        GRANT EXECUTE ON FUNCTION idxr.set_text_search_config(text, regconfig) TO idxr_worker;
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'idxr_reader')
           AND NOT pg_catalog.pg_has_role('idxr_worker', 'idxr_reader', 'MEMBER') THEN
            BEGIN
                GRANT idxr_reader TO idxr_worker;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE WARNING 'idxr: cannot grant role idxr_reader to idxr_worker (no CREATEROLE)';
            END;
        END IF;
    END IF;
END
$$;
