-- idxr-pg search: nearest-neighbour queries over idxr.search_index in plain SQL.
--
-- Public functions (schema idxr):
--   search(query, path_filter, entity_kind, k, filters)           the k nearest field records
--   search_entities(query, path_filter, entity_kind, k, filters)  the k nearest entities, each
--                                                                 with its best-matching field
--   similar_to(entity_kind, entity_id, path, k, path_filter)      search by example: the k
--                                                                 entities nearest to the stored
--                                                                 vector of one field
--   value_as_numeric / value_as_timestamptz / value_as_time / value_as_boolean(value, value_type)
--                                                                 typed views of `value`, for
--                                                                 structured filters by hand
-- Distances are cosine distances (`<=>`, 0 = same direction, 2 = opposite).
-- Every result row says whether its entity has queued changes not yet indexed (`stale`).
-- Lexical (full-text) and hybrid search are in 045_hybrid.sql.
--
-- How a filtered KNN query is run (measured in bench/search.py, see docs/benchmarks.md):
--   * No filter: the HNSW index of the query's vector size (search_index_embedding_hnsw_N, see
--     020_dimensions.sql), ORDER BY (embedding::vector(N)) <=> query, or with a halfvec index
--     (embedding::halfvec(N)) <=> query::halfvec(N); rows of other sizes (kinds embedded by
--     another model) are never compared. Distances returned are exact (float32) either way.
--   * A filter (path lquery, kind, structured filters, an excluded example entity): the
--     planner's estimate of the rows the filter admits (EXPLAIN; ltree and btree statistics
--     make it close, and it costs a plan, where counting the rows cost ~1 us per row) is
--     compared with exact_search_threshold(k). Below it the exact search is cheaper and
--     always complete: those rows are read (GiST on path, btree on kind) and sorted by
--     distance. At or above it, the HNSW index is walked with pgvector 0.8's iterative scan
--     (hnsw.iterative_scan = relaxed_order, re-sorted afterwards), which keeps walking until
--     k rows pass the filter or hnsw.max_scan_tuples index tuples were visited.
--   * If that walk still yields fewer than k rows (a filter whose rows are all far from the
--     query in vector space), the exact search runs instead: a selective filter returns k
--     rows whenever k rows match it.
-- The hnsw settings are function-local (SET clauses): a caller's session is never changed.
-- Re-applied after every upgrade: functions are CREATE OR REPLACE, the result type is created
-- once (a change to its shape needs a revision that drops it).

-- Load pgvector in this session so the hnsw.* settings of the functions below are validated
-- now, at install time, rather than at their first call.
DO $$ BEGIN PERFORM '[0]'::vector; END $$;

-- One result row of the search functions.
DO $$
BEGIN
    CREATE TYPE idxr.search_hit AS (
        entity_kind text,
        entity_id   text,
        path        ltree,
        value       text,
        distance    double precision,
        stale       boolean,           -- the entity has queued changes (see idxr.is_stale)
        chunk       integer,           -- the field's chunk that matched (NULL: not chunked)
        chunk_text  text               -- that chunk's text (see 019_chunks.sql)
    );
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

-- Whether an entity has changes the worker has not indexed yet: a row in idxr.queue (pending,
-- claimed or in retry) or its key in an idxr.queue_batches row. Search results carry it as
-- `stale`, so an application can show that a result is being updated. SECURITY DEFINER: the
-- reader role may not read the queue tables; this answers one yes/no per entity and nothing
-- else. The two EXISTS on idxr.queue match its partial indexes (queue_pending, queue_held).
CREATE OR REPLACE FUNCTION idxr.is_stale(entity_kind text, entity_id text)
RETURNS boolean
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM idxr.queue q
                    WHERE q.entity_kind = $1 AND q.entity_id = $2
                      AND q.claimed_by IS NULL AND q.attempts = 0)
        OR EXISTS (SELECT 1 FROM idxr.queue q
                    WHERE q.entity_kind = $1 AND q.entity_id = $2
                      AND (q.claimed_by IS NOT NULL OR q.attempts > 0))
        OR EXISTS (SELECT 1 FROM idxr.queue_batches b
                    WHERE b.entity_kind = $1 AND $2 = ANY (b.entity_ids))
$$;

-- Typed views of a record's value: NULL unless the value type matches and the text parses,
-- so they can be used in any WHERE clause without cast errors, e.g.
--   WHERE path ~ '*.price' AND idxr.value_as_numeric(value, value_type) > 40
CREATE OR REPLACE FUNCTION idxr.value_as_numeric(value text, value_type idxr.value_type)
RETURNS numeric
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN value_type IN ('integer', 'float', 'decimal')
         AND value ~* '^\s*[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d{1,4})?\s*$|^\s*[-+]?(inf|infinity|nan)\s*$'
        THEN value::numeric
    END
$$;

CREATE OR REPLACE FUNCTION idxr.value_as_timestamptz(value text, value_type idxr.value_type)
RETURNS timestamptz
LANGUAGE sql
STABLE PARALLEL SAFE  -- a value without offset is read in the session's TimeZone
AS $$
    SELECT CASE
        WHEN value_type IN ('datetime', 'date')
         AND value ~ '^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2}(:?\d{2}(\.\d+)?)?)?)?)?$'
        THEN value::timestamptz
    END
$$;

CREATE OR REPLACE FUNCTION idxr.value_as_time(value text, value_type idxr.value_type)
RETURNS time
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN value_type = 'time'
         AND value ~ '^\d{2}:\d{2}(:\d{2}(\.\d+)?)?$'
        THEN value::time
        WHEN value_type = 'time'  -- with an offset: the wall-clock time, offset dropped
         AND value ~ '^\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2}(:?\d{2}(\.\d+)?)?)?)$'
        THEN substring(value FROM '^\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?')::time
    END
$$;

CREATE OR REPLACE FUNCTION idxr.value_as_boolean(value text, value_type idxr.value_type)
RETURNS boolean
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN value_type = 'boolean' THEN lower(value) IN ('true', 't', '1') END
$$;

-- Rows a filter may admit for the exact search to be chosen over the HNSW walk. The exact
-- search costs ~ a * admitted rows; a filtered HNSW walk visits ~ k * N / admitted index
-- tuples at ~ b each (N rows in the index): equal at admitted = sqrt(b/a * k * N). Measured
-- with bench/search.py (docs/benchmarks.md), k = 10, 1M rows: exact over 5,000 admitted rows
-- 9 ms vs the walk 63 ms (recall 0.86); over 50,000 rows 285 ms vs 5 ms (recall 0.95); 100k
-- rows: 500 rows 0.7 vs 29 ms, 5,000 rows 4.7 vs 1.7 ms (recall 0.97). b/a = 30 puts the
-- switch between those points at both sizes (5,477 rows at 100k, 17,321 at 1M), erring
-- towards the exact search, whose recall is 1.
CREATE OR REPLACE FUNCTION idxr.exact_search_threshold(k integer)
RETURNS integer
LANGUAGE sql
STABLE PARALLEL SAFE
AS $$
    SELECT greatest(1000, sqrt(30.0 * k * greatest(c.reltuples, 0)))::integer
      FROM pg_class c
     WHERE c.oid = 'idxr.search_index'::regclass
$$;

-- The most structured filter conditions one search takes (the one owner of the number; the
-- Python API mirrors it as idxr_pg.search.MAX_FILTERS, a test keeps them equal). Every
-- condition is one more aggregate in the filter's single pass over an entity's records, so
-- planning and running grow linearly with it; the cap bounds what one caller can ask for.
CREATE OR REPLACE FUNCTION idxr.max_search_filters()
RETURNS integer
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$ SELECT 32 $$;

-- Structured filters: a jsonb array of conditions, all of which an entity must meet.
--   {"path": LQUERY, "op": OP, "value": V, "type": VALUE_TYPE}
-- An entity meets a condition when at least one of its records has a path matching the
-- lquery (and the value_type `type`, when given) whose value compares true with V:
--   op     = != < <= > >= (default when a value is given: =), or exists (no value)
--   domain the comparison runs in: from `type` when given (integer/float/decimal: numeric;
--          datetime/date: timestamptz; time; boolean; string/uuid: text), else from V: a
--          JSON number compares numerically, a boolean as boolean, a string that starts like
--          an ISO date (YYYY-MM-DD) as timestamptz, one like HH:MM as time, any other as text.
-- Returns the SQL condition (for a row aliased `s`), reading the conditions from the jsonb
-- parameter $<param>: only whitelisted operators, casts and integer positions are spliced in,
-- never a value. Raises a clear error for a malformed condition, or for more conditions than
-- idxr.max_search_filters().
-- The condition is one correlated subquery reading the entity's records once, with one
-- bool_or per filter: planning cost is linear in the number of filters (one EXISTS per filter
-- made the planner's join search explode: 8.5 s to plan 100 filters, 81 s for 200).
CREATE OR REPLACE FUNCTION idxr.search_filter_sql(filters jsonb, param integer)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT  -- see knn_search
AS $$
DECLARE
    cond      jsonb;
    i         integer;
    op        text;
    vtype     text;
    domain    text;
    val       jsonb;
    val_text  text;
    clause    text;
    compare   text;
    sql_out   text := '';
    cap       constant integer := idxr.max_search_filters();
    ops       constant text[] := ARRAY['=', '!=', '<>', '<', '<=', '>', '>=', 'exists'];
BEGIN
    IF filters IS NULL OR jsonb_typeof(filters) = 'null' THEN
        RETURN '';
    END IF;
    IF jsonb_typeof(filters) = 'object' THEN
        filters := jsonb_build_array(filters);
    END IF;
    IF jsonb_typeof(filters) <> 'array' THEN
        RAISE EXCEPTION 'idxr: filters must be a JSON array of conditions, got a JSON %',
            jsonb_typeof(filters)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'e.g. [{"path": "subscription.*.price", "op": ">", "value": 40}]';
    END IF;
    IF jsonb_array_length(filters) > cap THEN
        RAISE EXCEPTION 'idxr: at most % filters per search, got %', cap, jsonb_array_length(filters)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Combine conditions with an lquery path (e.g. "*.a|b.price") or filter the results.';
    END IF;
    IF jsonb_array_length(filters) = 0 THEN
        RETURN '';
    END IF;
    FOR i IN 0 .. jsonb_array_length(filters) - 1 LOOP
        cond := filters -> i;
        IF jsonb_typeof(cond) <> 'object' THEN
            RAISE EXCEPTION 'idxr: filter % must be a JSON object, got %', i + 1, cond
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF EXISTS (SELECT 1 FROM jsonb_object_keys(cond) key
                    WHERE key NOT IN ('path', 'op', 'value', 'type')) THEN
            RAISE EXCEPTION 'idxr: filter % has unknown keys (allowed: path, op, value, type): %',
                i + 1, cond
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(cond -> 'path') IS DISTINCT FROM 'string' THEN
            RAISE EXCEPTION 'idxr: filter % needs a "path" (an lquery string): %', i + 1, cond
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        BEGIN
            PERFORM (cond ->> 'path')::lquery;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'idxr: filter %: path % is not a valid lquery: %',
                i + 1, cond ->> 'path', SQLERRM
                USING ERRCODE = 'invalid_parameter_value';
        END;
        vtype := cond ->> 'type';
        IF vtype IS NOT NULL
           AND vtype <> ALL (enum_range(NULL::idxr.value_type)::text[]) THEN
            RAISE EXCEPTION 'idxr: filter %: unknown value type % (one of: %)',
                i + 1, cond -> 'type', array_to_string(enum_range(NULL::idxr.value_type)::text[], ', ')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        val := cond -> 'value';
        op := coalesce(cond ->> 'op', CASE WHEN val IS NULL THEN 'exists' ELSE '=' END);
        IF op <> ALL (ops) THEN
            RAISE EXCEPTION 'idxr: filter %: unknown operator % (one of: %)',
                i + 1, cond -> 'op', array_to_string(ops, ' ')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF op = '<>' THEN
            op := '!=';
        END IF;

        clause := format('f.path ~ ($%1$s -> %2$s ->> ''path'')::lquery', param, i);
        IF vtype IS NOT NULL THEN
            clause := clause || format(
                ' AND f.value_type = ($%1$s -> %2$s ->> ''type'')::idxr.value_type', param, i);
        END IF;

        IF op = 'exists' THEN
            IF val IS NOT NULL THEN
                RAISE EXCEPTION 'idxr: filter %: "exists" takes no value: %', i + 1, cond
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            sql_out := sql_out || CASE WHEN i > 0 THEN ' AND ' ELSE '' END
                || 'bool_or(' || clause || ')';
            CONTINUE;
        END IF;
        IF val IS NULL OR jsonb_typeof(val) IN ('null', 'object', 'array') THEN
            RAISE EXCEPTION 'idxr: filter %: operator % needs a "value" (number, string or boolean): %',
                i + 1, op, cond
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        val_text := cond ->> 'value';

        domain := CASE
            WHEN vtype IN ('integer', 'float', 'decimal') THEN 'numeric'
            WHEN vtype IN ('datetime', 'date') THEN 'timestamptz'
            WHEN vtype = 'time' THEN 'time'
            WHEN vtype = 'boolean' THEN 'boolean'
            WHEN vtype IS NOT NULL THEN 'text'
            WHEN jsonb_typeof(val) = 'number' THEN 'numeric'
            WHEN jsonb_typeof(val) = 'boolean' THEN 'boolean'
            WHEN val_text ~ '^\d{4}-\d{2}-\d{2}' THEN 'timestamptz'
            WHEN val_text ~ '^\d{2}:\d{2}' THEN 'time'
            ELSE 'text'
        END;
        BEGIN
            CASE domain
                WHEN 'numeric' THEN PERFORM val_text::numeric;
                WHEN 'timestamptz' THEN PERFORM val_text::timestamptz;
                WHEN 'time' THEN PERFORM val_text::time;
                WHEN 'boolean' THEN PERFORM val_text::boolean;
                ELSE NULL;
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'idxr: filter %: value % is not a valid % for path %',
                i + 1, val, domain, cond ->> 'path'
                USING ERRCODE = 'invalid_parameter_value';
        END;
        IF domain = 'boolean' AND op NOT IN ('=', '!=') THEN
            RAISE EXCEPTION 'idxr: filter %: booleans compare with = or != only, not %', i + 1, op
                USING ERRCODE = 'invalid_parameter_value';
        END IF;

        compare := CASE domain
            WHEN 'numeric' THEN 'idxr.value_as_numeric(f.value, f.value_type)'
            WHEN 'timestamptz' THEN 'idxr.value_as_timestamptz(f.value, f.value_type)'
            WHEN 'time' THEN 'idxr.value_as_time(f.value, f.value_type)'
            WHEN 'boolean' THEN 'idxr.value_as_boolean(f.value, f.value_type)'
            ELSE 'f.value'
        END;
        clause := clause || format(
            ' AND %1$s %2$s ($%3$s -> %4$s ->> ''value'')::%5$s',
            compare, CASE op WHEN '!=' THEN '<>' ELSE op END, param, i, domain);
        sql_out := sql_out || CASE WHEN i > 0 THEN ' AND ' ELSE '' END
            || 'bool_or(' || clause || ')';
    END LOOP;
    -- bool_or ignores NULL comparisons (a value that does not parse in the domain): an entity
    -- meets a condition when some record compares true; IS TRUE maps "none" (NULL) to false.
    -- chunk = 0: a field's own row (its chunk rows hold no value).
    RETURN ' AND (SELECT ' || sql_out || ' FROM idxr.search_index f'
        ' WHERE f.entity_kind = s.entity_kind AND f.entity_id = s.entity_id AND f.chunk = 0) IS TRUE';
END
$$;

-- Validates the arguments every search function shares (a NULL query is not checked here, so
-- clients can validate the rest before they embed the query); raises a clear error.
CREATE OR REPLACE FUNCTION idxr.check_search_args(query vector, entity_kind text, k integer)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT  -- see knn_search
AS $$
DECLARE
    query_dims integer := vector_dims(query);
    index_dims integer;
    served     text := '';
    active     idxr.index_versions;
    known      text;
BEGIN
    -- The size the query must have: that of the kind's active index version, else the one
    -- size of the whole index (idxr.embedding_dimensions; NULL when kinds of several sizes
    -- coexist: then some kind's active version must have the query's size).
    IF query IS NOT NULL THEN
        IF entity_kind IS NOT NULL THEN
            SELECT * INTO active FROM idxr.index_versions v
             WHERE v.entity_kind = check_search_args.entity_kind AND v.state = 'active';
        END IF;
        IF active.version IS NOT NULL THEN
            index_dims := active.dimensions;
            served := format(' for entity kind %s (index version %s, model %s)',
                             quote_literal(entity_kind), active.version, active.model_name);
        ELSE
            index_dims := idxr.embedding_dimensions();
            IF index_dims IS NULL
               AND NOT EXISTS (SELECT 1 FROM idxr.index_versions v
                                WHERE v.state = 'active' AND v.dimensions = query_dims)
               AND EXISTS (SELECT 1 FROM idxr.index_versions v WHERE v.state = 'active') THEN
                SELECT string_agg(format('%s: %s', v.entity_kind, v.dimensions), ', ' ORDER BY v.entity_kind)
                  INTO known FROM idxr.index_versions v WHERE v.state = 'active';
                RAISE EXCEPTION 'idxr: the query vector has % dimensions but no entity kind''s active index version has that size (%)',
                    query_dims, known
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Name the entity kind and embed the query with its active version''s model (see idxr.versions).';
            END IF;
        END IF;
        IF index_dims IS NOT NULL AND query_dims <> index_dims THEN
            RAISE EXCEPTION 'idxr: the query vector has % dimensions but idxr.search_index holds %-dimensional embeddings%',
                query_dims, index_dims, served
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Embed the query with the model of the active index version (see idxr.versions).';
        END IF;
    END IF;
    IF query IS NOT NULL AND vector_norm(query) = 0 THEN
        RAISE EXCEPTION 'idxr: the query vector is all zeros: it has no direction, so its cosine distance to every row is undefined (NaN)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF k IS NULL OR k < 1 OR k > 1000 THEN
        RAISE EXCEPTION 'idxr: k must be between 1 and 1000, got %', coalesce(k::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF entity_kind IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM idxr.entity_kinds ek WHERE ek.name = check_search_args.entity_kind)
       AND NOT EXISTS (SELECT 1 FROM idxr.search_index si WHERE si.entity_kind = check_search_args.entity_kind) THEN
        SELECT string_agg(quote_literal(ek.name), ', ' ORDER BY ek.name) INTO known FROM idxr.entity_kinds ek;
        RAISE EXCEPTION 'idxr: unknown entity kind %', quote_literal(entity_kind)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Known kinds: ' || coalesce(known, 'none registered yet') || '.';
    END IF;
END
$$;

-- The engine behind the public functions (call those instead; `stale` is NULL here, the public
-- functions fill it in for the k rows returned). Returns the k nearest rows
-- that have an embedding and pass every filter; with per_entity, the k nearest entities,
-- each represented by its nearest row. exclude_kind/exclude_id drop one entity (similar_to).
-- Uses dynamic SQL so each query is planned with its actual arguments; the arguments are
-- always passed as parameters ($1..$8), never spliced into the text.
CREATE OR REPLACE FUNCTION idxr.knn_search(
    query        vector,
    path_filter  lquery,
    entity_kind  text,
    k            integer,
    filters      jsonb,
    per_entity   boolean,
    exclude_kind text DEFAULT NULL,
    exclude_id   text DEFAULT NULL
)
RETURNS SETOF idxr.search_hit
LANGUAGE plpgsql
VOLATILE  -- EXPLAIN (the row estimate) is not allowed in a STABLE function
-- relaxed_order finds k filtered rows in fewer index tuples than strict_order; the results are
-- re-sorted by exact distance below, so callers still get them in order.
SET hnsw.iterative_scan = relaxed_order
-- ef_search 100 rather than pgvector's 40: recall@10 against exact search at 1M rows in
-- bench/search.py was 1.000 with 100 in every run and 0.967-1.000 with 40, for about a
-- millisecond more (on harder, isotropic synthetic vectors: 0.63 vs 0.49); the iterative
-- scan goes beyond it when k is larger.
SET hnsw.ef_search = 100
-- hnsw.max_scan_tuples (pgvector default 20000) is left to the session: it bounds how far a
-- filtered walk goes before the exact search takes over.
-- JIT compilation costs 50-400 ms per statement here (the HNSW and exact plans' costs pass
-- jit_above_cost) and these statements run in milliseconds without it.
SET jit = off
-- The vector and ltree operators (<=>, ~) resolve through the search_path the schema was
-- installed with (where CREATE EXTENSION put them), whatever the caller's search_path is.
SET search_path FROM CURRENT
AS $$
DECLARE
    -- Rows of the query's vector size only. The HNSW walk is written as the partial index
    -- of that size is defined (020_dimensions.sql), with the size as a literal and the storage
    -- (vector or halfvec) of the index serving now, so the planner matches it. The distances
    -- returned (cols) are exact float32 ones either way: a halfvec walk only picks the rows,
    -- which are then re-sorted by exact distance. The exact search needs the size condition
    -- only when kinds of another size exist (each costs ~0.3 us per row read: 15% of an exact
    -- search over 5,000 rows).
    storage    constant text := idxr.embedding_index_storage(vector_dims(query));
    order_sql  constant text := CASE storage
        WHEN 'halfvec' THEN format('(s.embedding::halfvec(%1$s)) <=> $1::halfvec(%1$s)', vector_dims(query))
        ELSE format('(s.embedding::vector(%s)) <=> $1', vector_dims(query)) END;
    where_sql  text := CASE WHEN idxr.embedding_dimensions() IS NOT DISTINCT FROM vector_dims(query)
                            THEN 's.embedding IS NOT NULL'
                            ELSE format('vector_dims(s.embedding) = %s', vector_dims(query)) END;
    -- The HNSW query's own filters are written as `(...) IS TRUE`: same rows, but the planner
    -- cannot turn them into GiST/btree index conditions and so walks the HNSW index in order
    -- instead of sorting all admitted rows (that is the exact branch's job).
    hnsw_where text := format('vector_dims(s.embedding) = %s', vector_dims(query));
    -- What the filter admits, for the planner's estimate: without the size condition, whose
    -- selectivity the planner does not know (a function of the vector: a default of 0.5%
    -- would make every filter look selective); in a one-model database it admits every row.
    estimate_sql text := 's.embedding IS NOT NULL';
    selective  boolean := false;
    admitted   double precision;
    plan       json;
    hits       idxr.search_hit[] := '{}';
    hit        idxr.search_hit;
    seen       jsonb := '{}';   -- entity key -> its position in hits
    entity_key text;
    pos        integer;
    remaining  integer;
    slack      constant integer := 100;
    -- Both depend on k: set after check_search_args has refused a k out of range (computed
    -- here they raised "cannot take square root of a negative number" or "integer out of range").
    max_fetch  integer;
    threshold  integer;
    cols       constant text := 's.entity_kind, s.entity_id, s.path, s.value, (s.embedding <=> $1)::double precision AS distance, NULL::boolean AS stale, CASE WHEN s.chunk_start IS NOT NULL THEN s.chunk END AS chunk, NULL::text AS chunk_text';
    -- The rows of one result: an entity (per_entity), else a field, whose chunks are rows of
    -- their own (019_chunks.sql): a field is returned once, with its nearest chunk.
    result_key constant text := CASE WHEN per_entity THEN 'c.entity_kind, c.entity_id'
                                     ELSE 'c.entity_kind, c.entity_id, c.path' END;
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION 'idxr: the query vector is NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM idxr.check_search_args(query, entity_kind, k);
    max_fetch := greatest(1000, 100 * k);
    threshold := idxr.exact_search_threshold(k);

    IF path_filter IS NOT NULL THEN
        estimate_sql := estimate_sql || ' AND s.path ~ $2';
        where_sql := where_sql || ' AND s.path ~ $2';
        hnsw_where := hnsw_where || ' AND (s.path ~ $2) IS TRUE';
        selective := true;
    END IF;
    IF entity_kind IS NOT NULL THEN
        estimate_sql := estimate_sql || ' AND s.entity_kind = $3';
        where_sql := where_sql || ' AND s.entity_kind = $3';
        hnsw_where := hnsw_where || ' AND (s.entity_kind = $3) IS TRUE';
        selective := true;
    END IF;
    IF filters IS NOT NULL AND jsonb_typeof(filters) <> 'null' THEN
        estimate_sql := estimate_sql || idxr.search_filter_sql(filters, 5);
        where_sql := where_sql || idxr.search_filter_sql(filters, 5);
        hnsw_where := hnsw_where || idxr.search_filter_sql(filters, 5);
        selective := true;
    END IF;
    IF exclude_kind IS NOT NULL THEN
        estimate_sql := estimate_sql || ' AND (s.entity_kind, s.entity_id) IS DISTINCT FROM ($6, $7)';
        where_sql := where_sql || ' AND (s.entity_kind, s.entity_id) IS DISTINCT FROM ($6, $7)';
        hnsw_where := hnsw_where || ' AND (s.entity_kind, s.entity_id) IS DISTINCT FROM ($6, $7)';
    END IF;

    IF selective THEN
        -- The planner's row estimate for the filter (ltree and btree statistics make it close;
        -- see docs/benchmarks.md): as cheap as planning, unlike counting the rows.
        EXECUTE format('EXPLAIN (FORMAT JSON) SELECT 1 FROM idxr.search_index s WHERE %s', estimate_sql)
            INTO plan
            USING query, path_filter, entity_kind, k, filters, exclude_kind, exclude_id;
        admitted := (plan -> 0 -> 'Plan' ->> 'Plan Rows')::double precision;
        RAISE DEBUG 'idxr: the filter admits about % rows (exact search below %)', admitted, threshold;
    END IF;

    IF NOT selective OR admitted >= threshold THEN
        IF per_entity OR EXISTS (SELECT 1 FROM idxr.search_index s0 WHERE s0.chunk > 0) THEN
            -- One HNSW walk, read (in small batches, by the FOR loop's cursor) until k distinct
            -- entities and then `slack` rows more (about one more round of the scan: relaxed
            -- order may still bring closer rows; measured at 1M rows, 5% filter: recall 0.975
            -- with 100, 0.94 with 20), keeping each entity's nearest row. Leaving the loop
            -- stops the scan. Re-running the query with a larger LIMIT instead would start the
            -- walk over (measured: up to 10x slower for a 5% filter whose entities have ten
            -- similar fields each). Fields (not per_entity) are read the same way when some
            -- field is chunked, keeping each field's nearest chunk, without the slack: k
            -- distinct fields end the walk, as LIMIT k does where no field has chunks.
            FOR hit IN EXECUTE format(
                'SELECT %s FROM idxr.search_index s WHERE %s ORDER BY %s LIMIT $8',
                cols, hnsw_where, order_sql)
                USING query, path_filter, entity_kind, k, filters, exclude_kind, exclude_id, max_fetch
            LOOP
                entity_key := hit.entity_kind || E'\x1f' || hit.entity_id
                              || CASE WHEN per_entity THEN '' ELSE E'\x1f' || hit.path::text END;
                pos := (seen ->> entity_key)::integer;
                IF pos IS NULL THEN
                    hits := hits || hit;
                    seen := seen || jsonb_build_object(entity_key, cardinality(hits));
                ELSIF hit.distance < hits[pos].distance THEN
                    hits[pos] := hit;
                END IF;
                IF cardinality(hits) >= k THEN
                    remaining := coalesce(remaining, CASE WHEN per_entity THEN slack ELSE 0 END) - 1;
                    EXIT WHEN remaining <= 0;
                END IF;
            END LOOP;
        ELSE
            EXECUTE format(
                'SELECT array_agg(ROW(c.entity_kind, c.entity_id, c.path, c.value, c.distance, c.stale,'
                '                     c.chunk, c.chunk_text)::idxr.search_hit)'
                ' FROM (SELECT %s FROM idxr.search_index s WHERE %s'
                '       ORDER BY %s LIMIT $4) c', cols, hnsw_where, order_sql)
                INTO hits
                USING query, path_filter, entity_kind, k, filters, exclude_kind, exclude_id;
        END IF;
        IF coalesce(cardinality(hits), 0) >= k THEN
            -- Re-sorted by distance: relaxed order returns rows only roughly in order.
            RETURN QUERY SELECT * FROM idxr.chunk_hits(ARRAY(
                SELECT h FROM unnest(hits) h ORDER BY h.distance LIMIT k));
            RETURN;
        END IF;
        RAISE DEBUG 'idxr: the HNSW walk found % of % rows', coalesce(cardinality(hits), 0), k;
        -- The index walk gave fewer than k: fall through to the exact search, which is
        -- complete (and cheap when few rows pass the filter, which is the usual reason).
    END IF;

    RAISE DEBUG 'idxr: exact search';
    -- Exact search: every admitted row's distance, sorted. MATERIALIZED keeps the planner from
    -- answering the ORDER BY with the (approximate) HNSW index.
    EXECUTE format(
        'WITH c AS MATERIALIZED (SELECT %s FROM idxr.search_index s WHERE %s)'
        ' SELECT array_agg(ROW(b.entity_kind, b.entity_id, b.path, b.value, b.distance, b.stale,'
        '                      b.chunk, b.chunk_text)::idxr.search_hit ORDER BY b.distance) FROM ('
        '   SELECT b.* FROM (SELECT DISTINCT ON (%s) c.* FROM c ORDER BY %s, c.distance) b'
        '    ORDER BY b.distance LIMIT $4) b', cols, where_sql, result_key, result_key)
        INTO hits
        USING query, path_filter, entity_kind, k, filters, exclude_kind, exclude_id;
    RETURN QUERY SELECT * FROM idxr.chunk_hits(hits);
END
$$;

-- The k nearest field records to `query` among those whose path matches `path_filter`, of
-- kind `entity_kind`, in entities meeting `filters` (see search_filter_sql); NULL = no limit.
CREATE OR REPLACE FUNCTION idxr.search(
    query       vector,
    path_filter lquery DEFAULT NULL,
    entity_kind text DEFAULT NULL,
    k           integer DEFAULT 10,
    filters     jsonb DEFAULT NULL
)
RETURNS SETOF idxr.search_hit
LANGUAGE sql
VOLATILE  -- as knn_search
AS $$
    SELECT h.entity_kind, h.entity_id, h.path, h.value, h.distance,
           idxr.is_stale(h.entity_kind, h.entity_id), h.chunk, h.chunk_text
      FROM idxr.knn_search(query, path_filter, entity_kind, k, filters, false) h
$$;

-- Entity-level nearest neighbours. For kinds without a composite record (config `composite:`,
-- recorded in idxr.entity_kinds.composite) an entity is as near as its nearest field
-- (knn_search). With one, the entity's distance fuses two pieces of evidence: the mean of the
-- composite record's distance (path = the kind's root label: the entity as a whole) and its
-- nearest field's distance, over the candidates of a deeper knn_search (4k, at least 100
-- entities), each looked up exactly by its key; the row shows the nearest field. Measured in
-- bench/quality.py (docs/benchmarks.md): nDCG@10 0.543 against 0.515 for the nearest row with
-- the composite among the fields, 0.498 without it, and 0.517 for one exact vector per
-- document. The composite counts only when it matches path_filter (when one is given).
CREATE OR REPLACE FUNCTION idxr.entity_knn(
    query       vector,
    path_filter lquery,
    entity_kind text,
    k           integer,
    filters     jsonb
)
RETURNS SETOF idxr.search_hit
LANGUAGE plpgsql
VOLATILE  -- as knn_search
SET jit = off  -- see knn_search
SET search_path FROM CURRENT  -- see knn_search
AS $$
BEGIN
    PERFORM idxr.check_search_args(query, entity_knn.entity_kind, k);
    IF NOT EXISTS (SELECT 1 FROM idxr.entity_kinds ek
                    WHERE ek.composite IS NOT NULL
                      AND (entity_knn.entity_kind IS NULL OR ek.name = entity_knn.entity_kind)) THEN
        RETURN QUERY SELECT * FROM idxr.knn_search(query, path_filter, entity_knn.entity_kind, k,
                                                   filters, true);
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM idxr.chunk_hits(ARRAY(
    WITH c AS (
        SELECT h.entity_kind, h.entity_id
          FROM idxr.knn_search(query, path_filter, entity_knn.entity_kind,
                               least(1000, greatest(4 * k, 100)), filters, true) h
    ),
    scored AS (
        SELECT c.entity_kind, c.entity_id,
               coalesce(b.path, w.path) AS path, coalesce(b.value, w.value) AS value,
               CASE WHEN b.path IS NOT NULL THEN b.chunk ELSE w.chunk END AS chunk,
               CASE WHEN w.d IS NULL THEN b.d WHEN b.d IS NULL THEN w.d
                    ELSE (w.d + b.d) / 2 END AS distance
          FROM c
          LEFT JOIN LATERAL (  -- the composite record: its nearest chunk
              SELECT s.path, s.value, (s.embedding <=> query)::double precision AS d,
                     CASE WHEN s.chunk_start IS NOT NULL THEN s.chunk END AS chunk
                FROM idxr.search_index s
               WHERE s.entity_kind = c.entity_kind AND s.entity_id = c.entity_id
                 AND nlevel(s.path) = 1 AND vector_dims(s.embedding) = vector_dims(query)
                 AND (path_filter IS NULL OR s.path ~ path_filter)
               ORDER BY 3 LIMIT 1
          ) w ON true
          LEFT JOIN LATERAL (  -- the nearest field (its nearest chunk)
              SELECT s.path, s.value, (s.embedding <=> query)::double precision AS d,
                     CASE WHEN s.chunk_start IS NOT NULL THEN s.chunk END AS chunk
                FROM idxr.search_index s
               WHERE s.entity_kind = c.entity_kind AND s.entity_id = c.entity_id
                 AND nlevel(s.path) > 1 AND vector_dims(s.embedding) = vector_dims(query)
                 AND (path_filter IS NULL OR s.path ~ path_filter)
               ORDER BY 3 LIMIT 1
          ) b ON true
    )
    SELECT ROW(sc.entity_kind, sc.entity_id, sc.path, sc.value, sc.distance, NULL::boolean,
               sc.chunk, NULL::text)::idxr.search_hit
      FROM scored sc
     WHERE sc.distance IS NOT NULL
     ORDER BY sc.distance, sc.entity_kind, sc.entity_id
     LIMIT k));
END
$$;

-- Like search, one row per entity: the k nearest entities, each with its nearest field
-- (among those matching path_filter) and that field's path, value and distance (for a kind
-- with a composite record, the fused distance of idxr.entity_knn).
CREATE OR REPLACE FUNCTION idxr.search_entities(
    query       vector,
    path_filter lquery DEFAULT NULL,
    entity_kind text DEFAULT NULL,
    k           integer DEFAULT 10,
    filters     jsonb DEFAULT NULL
)
RETURNS SETOF idxr.search_hit
LANGUAGE sql
VOLATILE  -- as knn_search
AS $$
    SELECT h.entity_kind, h.entity_id, h.path, h.value, h.distance,
           idxr.is_stale(h.entity_kind, h.entity_id), h.chunk, h.chunk_text
      FROM idxr.entity_knn(query, path_filter, entity_kind, k, filters) h
$$;

-- Search by example: the k entities (other than the example) nearest to the stored vector of
-- the example's field `path`, each with its nearest field; `path_filter` limits the fields
-- compared (e.g. 'product.description' to compare descriptions only).
CREATE OR REPLACE FUNCTION idxr.similar_to(
    entity_kind text,
    entity_id   text,
    path        ltree,
    k           integer DEFAULT 10,
    path_filter lquery DEFAULT NULL
)
RETURNS SETOF idxr.search_hit
LANGUAGE plpgsql
VOLATILE  -- as knn_search
SET search_path FROM CURRENT  -- see knn_search
AS $$
#variable_conflict use_variable
DECLARE
    example vector;
    found_row boolean;
BEGIN
    IF entity_kind IS NULL OR entity_id IS NULL OR path IS NULL THEN
        RAISE EXCEPTION 'idxr: similar_to needs an entity kind, an entity id and a path'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT true, s.embedding INTO found_row, example
      FROM idxr.search_index s
     WHERE s.entity_kind = entity_kind AND s.entity_id = entity_id AND s.path = path
       AND s.chunk = 0;  -- a chunked field's example: its first chunk
    IF found_row IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM idxr.search_index s
                        WHERE s.entity_kind = entity_kind AND s.entity_id = entity_id) THEN
            RAISE EXCEPTION 'idxr: no % entity with id % in idxr.search_index',
                quote_literal(entity_kind), quote_literal(entity_id)
                USING ERRCODE = 'no_data_found';
        END IF;
        RAISE EXCEPTION 'idxr: % entity % has no field at path %',
            quote_literal(entity_kind), quote_literal(entity_id), quote_literal(path::text)
            USING ERRCODE = 'no_data_found';
    END IF;
    IF example IS NULL THEN
        RAISE EXCEPTION 'idxr: % entity % field % has no embedding (only text fields are embedded)',
            quote_literal(entity_kind), quote_literal(entity_id), quote_literal(path::text)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT h.entity_kind, h.entity_id, h.path, h.value, h.distance,
                        idxr.is_stale(h.entity_kind, h.entity_id), h.chunk, h.chunk_text
                   FROM idxr.knn_search(example, path_filter, NULL, k, NULL, true,
                                        entity_kind, entity_id) h;
END
$$;
