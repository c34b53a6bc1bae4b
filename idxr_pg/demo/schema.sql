-- The demo application's own tables, in schema "demo". idxr-pg never changes them.
CREATE SCHEMA IF NOT EXISTS demo;

CREATE TABLE IF NOT EXISTS demo.customers (
    customer_id text PRIMARY KEY,
    name        text NOT NULL,
    segment     text NOT NULL
);

CREATE TABLE IF NOT EXISTS demo.products (
    product_id   uuid PRIMARY KEY,
    name         text NOT NULL,
    description  text NOT NULL,
    product_type text NOT NULL
);

CREATE TABLE IF NOT EXISTS demo.subscriptions (
    subscription_id uuid PRIMARY KEY,
    customer_id     text NOT NULL REFERENCES demo.customers,
    product_id      uuid NOT NULL REFERENCES demo.products,
    description     text NOT NULL,
    status          text NOT NULL,
    start_date      date NOT NULL,
    insync          boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS demo.product_blocks (
    block_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id uuid NOT NULL REFERENCES demo.subscriptions ON DELETE CASCADE,
    position        integer NOT NULL,
    name            text NOT NULL,
    description     text NOT NULL,
    speed_mbps      integer NOT NULL,
    location        text NOT NULL
);
CREATE INDEX IF NOT EXISTS product_blocks_subscription ON demo.product_blocks (subscription_id);
