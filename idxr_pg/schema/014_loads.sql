-- idxr-pg revision 0005: file loads (issue 17). Revisioned: Alembic revision 0005 runs this file
-- once; sql/install.sql runs it too, so it is idempotent.
--
-- `idxr-pg load FILE --table T` streams a CSV or JSONL file into an application table
-- (idxr_pg/loading/, SQL in idxr_pg/db/loads.py):
--   idxr.loads            the manifest: one row per load of a file into a table, with the
--                         file's size and sha256, its counts and its state;
--   idxr.load_partitions  the partitions a load committed (line and byte ranges), each in the
--                         same transaction as its rows, so `--resume` continues after the last;
--   idxr.load_keys        the keys a --delete-missing (snapshot) load has read.
-- A row is written only when its fingerprint (sha256 of its normalised values, computed by
-- idxr_pg/db/loads.py for the file's row and for the table's row alike) is new or changed.

CREATE TABLE IF NOT EXISTS idxr.loads (
    id              bigserial PRIMARY KEY,
    target_table    text NOT NULL,                 -- schema.table, as resolved
    file_path       text NOT NULL,                 -- absolute path
    file_size       bigint NOT NULL,
    file_sha256     text NOT NULL,                 -- hex sha256 of the whole file
    format          text NOT NULL CHECK (format IN ('csv', 'jsonl')),
    encoding        text NOT NULL,                 -- the codec the file was decoded with
    key_column      text NOT NULL,
    signature       text NOT NULL,                 -- sha256 of format, encoding, key, columns
    options         jsonb NOT NULL DEFAULT '{}',   -- columns and their fields, delete_missing
    state           text NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'done', 'unchanged', 'interrupted', 'failed')),
    appends_to      bigint REFERENCES idxr.loads (id) ON DELETE SET NULL,  -- load of the prefix
    resumes         integer NOT NULL DEFAULT 0,    -- times `--resume` continued it
    start_byte      bigint NOT NULL DEFAULT 0,     -- where this load began reading
    end_byte        bigint,                        -- where the last committed partition ends
    last_line       bigint NOT NULL DEFAULT 0,     -- number of the last line committed
    ends_with_newline boolean,
    rows_read       bigint NOT NULL DEFAULT 0,
    rows_inserted   bigint NOT NULL DEFAULT 0,
    rows_updated    bigint NOT NULL DEFAULT 0,
    rows_unchanged  bigint NOT NULL DEFAULT 0,
    rows_rejected   bigint NOT NULL DEFAULT 0,
    rows_deleted    bigint NOT NULL DEFAULT 0,
    errors_path     text,                          -- the YAML file of rejected lines
    error           text,                          -- why a failed load failed
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX IF NOT EXISTS loads_target_started ON idxr.loads (target_table, started_at DESC);

CREATE TABLE IF NOT EXISTS idxr.load_partitions (
    load_id         bigint NOT NULL REFERENCES idxr.loads (id) ON DELETE CASCADE,
    partition       integer NOT NULL,
    first_line      bigint NOT NULL,
    last_line       bigint NOT NULL,
    start_byte      bigint NOT NULL,
    end_byte        bigint NOT NULL,
    rows_read       bigint NOT NULL,
    rows_inserted   bigint NOT NULL,
    rows_updated    bigint NOT NULL,
    rows_unchanged  bigint NOT NULL,
    rows_rejected   bigint NOT NULL,
    errors_bytes    bigint NOT NULL DEFAULT 0,     -- size of the error file after this partition
    committed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (load_id, partition)
);

-- The keys a `--delete-missing` load has read so far (kept across `--resume`); the load deletes
-- the table's other rows at its end, then its keys here.
CREATE TABLE IF NOT EXISTS idxr.load_keys (
    load_id         bigint NOT NULL REFERENCES idxr.loads (id) ON DELETE CASCADE,
    key             text NOT NULL                  -- the key column's value as text
);
CREATE INDEX IF NOT EXISTS load_keys_load ON idxr.load_keys (load_id);
