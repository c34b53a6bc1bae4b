-- The demo's SQL: the application's writes, the SQL user's queries, and the checks each step
-- makes. `idxr_pg.demo.queries.query(name)` returns one statement; `{name}` placeholders are
-- filled by the caller (sql.SQL(...).format for identifiers, str.format for shown literals),
-- `%s` are query parameters.

-- name: drop_database
DROP DATABASE IF EXISTS {name} WITH (FORCE)

-- name: create_database
CREATE DATABASE {name}

-- name: insert_customer
INSERT INTO demo.customers VALUES (%s, %s, %s)

-- name: insert_product
INSERT INTO demo.products VALUES (%s, %s, %s, %s)

-- name: insert_subscription_row
INSERT INTO demo.subscriptions VALUES (%s, %s, %s, %s, %s, %s, %s)

-- name: insert_product_block_row
INSERT INTO demo.product_blocks
       (subscription_id, position, name, description, speed_mbps, location)
VALUES (%s, %s, %s, %s, %s, %s)

-- name: count_capture_triggers
SELECT count(*) FROM pg_trigger
 WHERE tgrelid IN ('demo.subscriptions'::regclass, 'demo.product_blocks'::regclass)
   AND NOT tgisinternal

-- name: index_counts
SELECT count(DISTINCT entity_id), count(*), count(embedding)
  FROM idxr.search_index WHERE entity_kind = %s

-- name: cached_texts
SELECT count(*) FROM idxr.embedding_cache

-- name: live_workers
SELECT count(*) FROM idxr.workers WHERE state = 'running' AND heartbeat_at > now() - interval '30 seconds'

-- name: now
SELECT clock_timestamp()

-- name: texts_cached_since
SELECT count(*) FROM idxr.embedding_cache WHERE created_at >= %s

-- name: rows_written_since
SELECT count(*) FROM idxr.search_index WHERE updated_at >= %s

-- name: first_subscription_refs
SELECT customer_id, product_id FROM demo.subscriptions ORDER BY subscription_id LIMIT 1

-- name: second_subscription_id
SELECT subscription_id::text FROM demo.subscriptions ORDER BY subscription_id OFFSET 1 LIMIT 1

-- name: entity_rows
SELECT count(*) FROM idxr.search_index WHERE entity_kind = %s AND entity_id = %s

-- name: value_at_path
SELECT value FROM idxr.search_index WHERE entity_kind = %s AND entity_id = %s AND path = %s::ltree

-- name: insert_subscription
INSERT INTO demo.subscriptions VALUES (%s, %s, %s, %s, 'provisioning', %s, true)

-- name: insert_product_block
INSERT INTO demo.product_blocks (subscription_id, position, name, description, speed_mbps, location)
VALUES (%s, 0, 'Quantum Channel', 'Entangled photon channel between two quantum labs', 10, 'Delft')

-- name: update_description
UPDATE demo.subscriptions SET description = %s WHERE subscription_id = %s

-- name: update_block_description
UPDATE demo.product_blocks SET description = %s WHERE subscription_id = %s AND position = 0

-- name: delete_product_blocks
DELETE FROM demo.product_blocks WHERE subscription_id = %s

-- name: delete_subscription
DELETE FROM demo.subscriptions WHERE subscription_id = %s

-- name: similar_descriptions
SELECT entity_id, path, value, round(distance::numeric, 3) AS distance
  FROM idxr.similar_to('{kind}', %s, '{kind}.description', 3)

-- name: nearest_block_descriptions
SELECT entity_id, path, value
  FROM idxr.search_index
 WHERE entity_kind = '{kind}' AND path ~ '{kind}.blocks.*.description'
   AND embedding IS NOT NULL
 ORDER BY embedding <=> (SELECT embedding FROM idxr.search_index
                         WHERE entity_id = %s AND path = '{kind}.description')
 LIMIT 3
