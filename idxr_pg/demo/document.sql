-- The subscription entity's document: the row joined with its customer, product and blocks.
SELECT s.subscription_id::text AS key,
       jsonb_build_object(
           'subscription_id', s.subscription_id,
           'description', s.description,
           'status', s.status,
           'start_date', s.start_date,
           'insync', s.insync,
           'customer', jsonb_build_object(
               'customer_id', c.customer_id, 'name', c.name, 'segment', c.segment),
           'product', jsonb_build_object(
               'product_id', p.product_id, 'name', p.name,
               'description', p.description, 'product_type', p.product_type),
           'blocks', COALESCE(
               (SELECT jsonb_agg(jsonb_build_object(
                           'name', b.name, 'description', b.description,
                           'speed_mbps', b.speed_mbps, 'location', b.location)
                       ORDER BY b.position)
                  FROM demo.product_blocks b
                 WHERE b.subscription_id = s.subscription_id),
               '[]'::jsonb)
       ) AS document
  FROM demo.subscriptions s
  JOIN demo.customers c ON c.customer_id = s.customer_id
  JOIN demo.products p ON p.product_id = s.product_id
 WHERE s.subscription_id = ANY(%(keys)s::uuid[])
