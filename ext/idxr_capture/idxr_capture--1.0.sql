-- idxr_capture 1.0 (a prototype, see idxr_capture.c): one trigger function; see idxr_capture.c
-- for its arguments.
\echo Use "CREATE EXTENSION idxr_capture" to load this file. \quit

CREATE FUNCTION idxr_capture() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'idxr_capture';
-- It writes idxr's queue as the queue's owner whatever the caller's rights: whoever can create
-- a trigger with it chooses the kind and keys it queues. Only the installer may.
REVOKE ALL ON FUNCTION idxr_capture() FROM PUBLIC;
