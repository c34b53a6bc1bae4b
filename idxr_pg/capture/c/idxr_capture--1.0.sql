-- idxr_capture 1.0: one trigger function, idxr.idxr_capture(); see idxr_capture.c for its
-- arguments. Trusted: `triggers install` creates it as the owner of schema idxr.
\echo Use "CREATE EXTENSION idxr_capture" to load this file. \quit

CREATE FUNCTION @extschema@.idxr_capture() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'idxr_capture';
-- It writes idxr's queue whatever the caller's rights: whoever can create a trigger with it
-- chooses the kind and keys it queues. Only the role that created the extension may (CREATE
-- TRIGGER checks EXECUTE; firing does not).
REVOKE ALL ON FUNCTION @extschema@.idxr_capture() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.idxr_capture() TO @extowner@;
