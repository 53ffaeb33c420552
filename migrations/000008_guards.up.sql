-- Two guards that keep one careless or hostile role from stopping the
-- mirror for everyone (integration/secure/README.md, "Threat model").
--
-- 1. The published tables refuse rows the agent could not mirror. Every row
--    goes to the key-value store as its to_jsonb text under a key built
--    from its columns, and a change the agent cannot write holds back every
--    change after it. So each table gets a CHECK constraint, <table>_mirrorable,
--    which applies to every path that writes it (the storage.* functions,
--    INSERT, UPDATE, COPY) and refuses, with an error naming the table, the
--    row and the limit:
--      * an empty key column, or one longer than its share of the store's
--        1,024-byte keys: storage.config.key at most 512 bytes and
--        storage.postgres_instance.host at most 253 bytes (a DNS name's
--        limit), counted as in the store key, where '%' and '/' take three
--        bytes each (%25, %2F). With the default key templates a --prefix of
--        up to 500 bytes keeps every key within 1,024 bytes;
--      * JSON that has no jsonb form: \u0000, a lone UTF-16 surrogate
--        (\ud800), a number outside numeric's range (1e1000000). The json
--        type keeps such text, to_jsonb (and so the agent) fails on it;
--      * JSON nested more than 500 levels deep (Perl's JSON::XS, which
--        Bagger's storage nodes decode with, stops at 512; the agent at
--        10,000);
--      * a row whose to_jsonb text exceeds 1 MiB (1,048,576 bytes): etcd takes
--        at most 1.5 MiB per request, checkpoint included.
--    Rows already in the tables are not refused by this migration: each
--    constraint is added NOT VALID and validated when every existing row
--    passes; otherwise it stays NOT VALID (new and changed rows are checked,
--    existing ones are not) and a WARNING names the rows. List them any
--    time with SELECT * FROM storage.unmirrorable_rows(); once fixed,
--    ALTER TABLE storage.<table> VALIDATE CONSTRAINT <table>_mirrorable.
--    What a store with smaller limits still refuses is handled by the
--    agent (`lenkwerk skip`, see agent/doc.go).
--
-- 2. Only the agent's role takes the agent's lock. Agents of one slot keep
--    each other out with the session-level advisory lock (19543,
--    hashtext(slot)); CONNECT is granted to PUBLIC by default, and any role
--    holding that lock kept every agent a standby. Advisory locks are per
--    database and so are the privileges on pg_catalog's functions: in this
--    database the two-key (int, int) lock functions are revoked from PUBLIC
--    and granted to lenkwerk_agent (superusers keep them). The one-key
--    (bigint) functions stay with PUBLIC: they lock another key space
--    (pg_locks.objsubid 1, not 2), which golang-migrate (these migrations,
--    pgkv's) and other tools use. This is why the Lenkwerk database must
--    be a database of its own. What would not do: a secret key (pg_locks
--    shows every lock to everyone), REVOKE CONNECT (lenkwerk_config and
--    pgkv's readers must connect), a lock on a table or row (it lasts a
--    transaction, and the walsender holding the lock runs
--    START_REPLICATION), the slot itself (free between
--    CREATE_REPLICATION_SLOT and START_REPLICATION). A local copy
--    (lenkwerk.role = copy) runs no agent and takes rows as the source
--    accepted them: neither guard applies there.
SET LOCAL ROLE lenkwerk_admin;

CREATE FUNCTION storage.mirror_key_segment(in_table text, in_column text, in_value text, in_max int)
RETURNS boolean LANGUAGE plpgsql IMMUTABLE
AS $$
DECLARE
    n int;
BEGIN
    IF in_value IS NULL THEN
        RETURN true; -- NOT NULL is the column's business
    END IF;
    IF in_value = '' THEN
        RAISE EXCEPTION '%: % must not be empty: it is a segment of the row''s key in the key-value store', in_table, in_column
            USING ERRCODE = 'check_violation', COLUMN = in_column;
    END IF;
    n := octet_length(replace(replace(in_value, '%', '%25'), '/', '%2F'));
    IF n > in_max THEN
        RAISE EXCEPTION '%: % % is % bytes in the row''s key-value store key, more than % (Lenkwerk''s limit, so that keys stay within the store''s 1,024 bytes)',
                in_table, in_column, storage.mirror_label(in_value), n, in_max
            USING ERRCODE = 'check_violation', COLUMN = in_column,
                  DETAIL = 'A key column counts as in the store key, where ''%'' and ''/'' take three bytes each.';
    END IF;
    RETURN true;
END
$$;

-- A value for an error message: quoted, at most 64 characters of it.
CREATE FUNCTION storage.mirror_label(in_value text)
RETURNS text LANGUAGE sql IMMUTABLE
RETURN CASE WHEN length(in_value) <= 64 THEN quote_literal(in_value)
            ELSE quote_literal(left(in_value, 64)) || '... (' || octet_length(in_value) || ' bytes)' END;

CREATE FUNCTION storage.mirror_row(in_table text, in_ident text, in_ident_value text, in_value anyelement)
RETURNS boolean LANGUAGE plpgsql STABLE
AS $$
DECLARE
    j jsonb;
    n bigint;
    msg text;
    detail text;
    in_row text;
BEGIN
    BEGIN
        j := to_jsonb(in_value);
    EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
        GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL;
        in_row := in_ident || ' ' || storage.mirror_label(in_ident_value);
        RAISE EXCEPTION '% row (%): its JSON has no jsonb form, so it cannot be mirrored: %', in_table, in_row,
                msg || CASE WHEN detail <> '' THEN ' (' || detail || ')' ELSE '' END
            USING ERRCODE = 'check_violation',
                  DETAIL = 'The agent writes each row as to_jsonb, which refuses \u0000, unpaired UTF-16 surrogates (\ud800) and numbers outside numeric''s range.';
    END;
    n := octet_length(j::text);
    IF n > 1048576 THEN
        in_row := in_ident || ' ' || storage.mirror_label(in_ident_value);
        RAISE EXCEPTION '% row (%): is % bytes as JSON (to_jsonb), more than the 1,048,576 (1 MiB) Lenkwerk mirrors', in_table, in_row, n
            USING ERRCODE = 'check_violation';
    END IF;
    -- The row is level 0, its columns level 1: a container at level 501 is
    -- a column value nested more than 500 deep (which takes 1,002 bytes).
    IF n > 1002 AND jsonb_path_exists(j, 'strict $.**{501} ? (@.type() == "object" || @.type() == "array")') THEN
        in_row := in_ident || ' ' || storage.mirror_label(in_ident_value);
        RAISE EXCEPTION '% row (%): its JSON nests more than 500 levels deep, the most Lenkwerk mirrors', in_table, in_row
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN true;
END
$$;

-- One check per table, for its constraint and storage.unmirrorable_rows().
CREATE FUNCTION storage.mirrorable(r storage.config)
RETURNS boolean LANGUAGE sql STABLE
RETURN storage.mirror_key_segment('storage.config', 'key', r.key, 512)
   AND storage.mirror_row('storage.config', 'key', r.key, r);

CREATE FUNCTION storage.mirrorable(r storage.postgres_instance)
RETURNS boolean LANGUAGE sql STABLE
RETURN storage.mirror_key_segment('storage.postgres_instance', 'host', r.host, 253)
   AND storage.mirror_row('storage.postgres_instance', 'host:port', r.host || ':' || r.port, r);

CREATE FUNCTION storage.mirrorable(r storage.servermap)
RETURNS boolean LANGUAGE sql STABLE
RETURN storage.mirror_row('storage.servermap', 'id', r.id::text, r);

CREATE FUNCTION storage.mirrorable(r storage.dimension)
RETURNS boolean LANGUAGE sql STABLE
RETURN storage.mirror_row('storage.dimension', 'id', r.id::text, r);

CREATE FUNCTION storage.mirrorable(r storage.index)
RETURNS boolean LANGUAGE sql STABLE
RETURN storage.mirror_row('storage.index', 'id', r.id::text, r);

CREATE FUNCTION storage.mirrorable(r storage.index_field)
RETURNS boolean LANGUAGE sql STABLE
RETURN storage.mirror_row('storage.index_field', 'id', r.id::text, r);

CREATE FUNCTION storage.unmirrorable_rows()
RETURNS TABLE (table_name text, problem text) LANGUAGE plpgsql STABLE
AS $$
DECLARE
    t text;
    r record;
BEGIN
    FOREACH t IN ARRAY ARRAY['config', 'postgres_instance', 'servermap', 'dimension', 'index', 'index_field'] LOOP
        FOR r IN EXECUTE format('SELECT ctid FROM ONLY storage.%I', t) LOOP
            BEGIN
                EXECUTE format('SELECT storage.mirrorable(t) FROM ONLY storage.%I t WHERE ctid = $1', t) USING r.ctid;
            EXCEPTION WHEN check_violation THEN
                table_name := 'storage.' || t;
                problem := SQLERRM;
                RETURN NEXT;
            END;
        END LOOP;
    END LOOP;
END
$$;

COMMENT ON FUNCTION storage.unmirrorable_rows() IS
'Rows the agent cannot mirror (key column empty or too long, JSON without a jsonb form, nested over 500 levels, over 1 MiB as JSON): those left from before migration 8 made the tables refuse them.';
COMMENT ON FUNCTION storage.mirror_row(text, text, text, anyelement) IS
'Check of the <table>_mirrorable constraints: to_jsonb of the row exists, is at most 1 MiB and nests at most 500 levels below its columns.';
COMMENT ON FUNCTION storage.mirror_label(text) IS
'A value as the errors of the <table>_mirrorable constraints show it: quoted, at most 64 characters.';
COMMENT ON FUNCTION storage.mirrorable(storage.config) IS
'Constraint config_mirrorable: the key is a store key segment of 1-512 bytes, and the row can be mirrored (storage.mirror_row).';
COMMENT ON FUNCTION storage.mirrorable(storage.postgres_instance) IS
'Constraint postgres_instance_mirrorable: the host is a store key segment of 1-253 bytes, and the row can be mirrored (storage.mirror_row).';
COMMENT ON FUNCTION storage.mirrorable(storage.servermap) IS
'Constraint servermap_mirrorable: the row can be mirrored (storage.mirror_row).';
COMMENT ON FUNCTION storage.mirrorable(storage.dimension) IS
'Constraint dimension_mirrorable: the row can be mirrored (storage.mirror_row).';
COMMENT ON FUNCTION storage.mirrorable(storage.index) IS
'Constraint index_mirrorable: the row can be mirrored (storage.mirror_row).';
COMMENT ON FUNCTION storage.mirrorable(storage.index_field) IS
'Constraint index_field_mirrorable: the row can be mirrored (storage.mirror_row).';
COMMENT ON FUNCTION storage.mirror_key_segment(text, text, text, int) IS
'Check of the <table>_mirrorable constraints: a key column is not empty and at most in_max bytes in the store key.';

-- Like every storage.* function (migration 5): lenkwerk_config, whose
-- writes the constraints check, and the owner.
REVOKE ALL ON FUNCTION storage.mirror_key_segment(text, text, text, int), storage.mirror_label(text),
    storage.mirror_row(text, text, text, anyelement), storage.mirrorable(storage.config),
    storage.mirrorable(storage.postgres_instance), storage.mirrorable(storage.servermap),
    storage.mirrorable(storage.dimension), storage.mirrorable(storage.index),
    storage.mirrorable(storage.index_field), storage.unmirrorable_rows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION storage.mirror_key_segment(text, text, text, int), storage.mirror_label(text),
    storage.mirror_row(text, text, text, anyelement), storage.mirrorable(storage.config),
    storage.mirrorable(storage.postgres_instance), storage.mirrorable(storage.servermap),
    storage.mirrorable(storage.dimension), storage.mirrorable(storage.index),
    storage.mirrorable(storage.index_field), storage.unmirrorable_rows() TO lenkwerk_config;

RESET ROLE;

DO $$
DECLARE
    t text;
    bad text;
    f regprocedure;
BEGIN
    IF EXISTS (SELECT FROM lenkwerk.setting WHERE name = 'role' AND value = 'copy') THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['config', 'postgres_instance', 'servermap', 'dimension', 'index', 'index_field'] LOOP
        EXECUTE format('ALTER TABLE storage.%1$I ADD CONSTRAINT %2$I CHECK (storage.mirrorable(%1$I)) NOT VALID', t, t || '_mirrorable');
        SELECT string_agg(problem, E'\n' ORDER BY problem) INTO bad
          FROM (SELECT problem FROM storage.unmirrorable_rows() WHERE table_name = 'storage.' || t LIMIT 20) p;
        IF bad IS NULL THEN
            EXECUTE format('ALTER TABLE storage.%I VALIDATE CONSTRAINT %I', t, t || '_mirrorable');
        ELSE
            RAISE WARNING 'storage.% has rows the Lenkwerk agent cannot mirror; constraint %_mirrorable is left NOT VALID (new and changed rows are checked, these are not)', t, t
                USING DETAIL = bad,
                      HINT = format('Fix or delete them (SELECT * FROM storage.unmirrorable_rows() lists them), then ALTER TABLE storage.%I VALIDATE CONSTRAINT %I.', t, t || '_mirrorable');
        END IF;
    END LOOP;

    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace
                AND p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$'
                AND p.proargtypes = '23 23'::oidvector LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO lenkwerk_agent', f);
    END LOOP;
END
$$;
