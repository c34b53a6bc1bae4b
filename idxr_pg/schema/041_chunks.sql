-- idxr-pg chunks (issue 16): one row per field for readers, and the matched chunk's text in
-- search results. The storage shape is described in 019_chunks.sql (revision 0009).
-- Re-applied after every upgrade (CREATE OR REPLACE).

-- One row per field of idxr.search_index (its chunk 0), for SQL users reading values:
-- `chunked` says whether the field's text was split into chunks. The embedding column is left
-- out: a view reading it would pin the column's type (see idxr.index_counts in 050_status.sql);
-- the field's first vector is search_index.embedding WHERE chunk = 0.
CREATE OR REPLACE VIEW idxr.search_fields AS
SELECT s.entity_kind, s.entity_id, s.path, s.value, s.value_type, s.content_hash,
       s.chunk_start IS NOT NULL AS chunked, s.truncation, s.updated_at
  FROM idxr.search_index s
 WHERE s.chunk = 0;

-- Search hits with their field's value and the matched chunk's text: a hit read from a chunk
-- row (value '') gets its field's value from the field's row (chunk 0), and `chunk_text` the
-- chunk's character range of it; hits of fields that are not chunked (chunk NULL) pass as they
-- are, without a look-up. Order kept.
CREATE OR REPLACE FUNCTION idxr.chunk_hits(hits idxr.search_hit[])
RETURNS SETOF idxr.search_hit
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
AS $$
    SELECT h.entity_kind, h.entity_id, h.path, coalesce(x.whole, h.value), h.distance, h.stale,
           h.chunk, x.part
      FROM unnest(hits) WITH ORDINALITY
           AS h(entity_kind, entity_id, path, value, distance, stale, chunk, chunk_text, n)
      -- LATERAL: two primary-key probes per chunked hit, none for the others.
      LEFT JOIN LATERAL (
          SELECT f.value AS whole,
                 substr(f.value, c.chunk_start + 1, c.chunk_end - c.chunk_start) AS part
            FROM idxr.search_index f
            JOIN idxr.search_index c
              ON c.entity_kind = f.entity_kind AND c.entity_id = f.entity_id
             AND c.path = f.path AND c.chunk = h.chunk
           WHERE h.chunk IS NOT NULL AND f.entity_kind = h.entity_kind
             AND f.entity_id = h.entity_id AND f.path = h.path AND f.chunk = 0
      ) x ON true
     ORDER BY h.n
$$;
