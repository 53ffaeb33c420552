-- pgkv schema, version 1. The driver runs this with search_path set to its
-- own schema (default lenkwerk_kv), so names are unqualified here.

-- One row: the store revision (the last committed revision) and the
-- compaction point (history at and before it is gone). Every writer takes
-- this row's lock first and keeps it until commit, which serializes
-- revision assignment: revisions commit in order, never out of order.
CREATE TABLE kv_meta (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    rev         bigint NOT NULL CHECK (rev >= 0),
    compact_rev bigint NOT NULL CHECK (compact_rev >= 0),
    CHECK (compact_rev <= rev)
) WITH (fillfactor = 20);

-- An empty store is at revision 1, as etcd is: a List of it returns 1, and
-- watching after 1 cannot be mistaken for "from now" (afterRev 0).
INSERT INTO kv_meta (rev, compact_rev) VALUES (1, 0);

-- Current state. Values are the exact bytes the writer gave (validated as
-- JSON by the driver, never re-normalized). COLLATE "C" makes ORDER BY key
-- byte order and lets the primary key serve prefix range scans.
CREATE TABLE kv (
    key     text COLLATE "C" PRIMARY KEY,
    value   bytea NOT NULL,
    mod_rev bigint NOT NULL
);

-- Change log: one row per event; all events of one batch share rev, idx is
-- the operation's position in the batch. value NULL is a delete.
CREATE TABLE kv_log (
    rev   bigint NOT NULL,
    idx   integer NOT NULL,
    key   text COLLATE "C" NOT NULL,
    value bytea,
    at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rev, idx)
);

-- kv_apply applies one batch (value NULL = delete) as one revision and
-- returns the store revision after it. Deleting absent keys changes nothing:
-- a batch without effect takes no revision and notifies nobody. p_channel
-- NULL skips the NOTIFY (tests use it to prove the poll safety net).
CREATE FUNCTION kv_apply(p_keys text[], p_values bytea[], p_channel text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_rev     bigint;
    v_changed bigint;
BEGIN
    -- The lock is taken before any key is touched, so every writer locks in
    -- the same order (no deadlocks) and holds it until commit.
    SELECT rev + 1 INTO STRICT v_rev FROM kv_meta FOR NO KEY UPDATE;

    WITH ops AS (
        SELECT o.key COLLATE "C" AS key, o.value, o.idx::integer AS idx
        FROM unnest(p_keys, p_values) WITH ORDINALITY AS o(key, value, idx)
    ), del AS (
        DELETE FROM kv USING ops
        WHERE ops.value IS NULL AND kv.key = ops.key
        RETURNING ops.idx, ops.key
    ), put AS (
        -- Runs to completion although nothing reads it; every put is an
        -- event, so the log takes puts straight from ops.
        INSERT INTO kv (key, value, mod_rev)
        SELECT ops.key, ops.value, v_rev FROM ops WHERE ops.value IS NOT NULL
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev
    )
    INSERT INTO kv_log (rev, idx, key, value)
    SELECT v_rev, ops.idx, ops.key, ops.value FROM ops WHERE ops.value IS NOT NULL
    UNION ALL
    SELECT v_rev, del.idx, del.key, NULL FROM del;
    GET DIAGNOSTICS v_changed = ROW_COUNT;

    IF v_changed = 0 THEN
        RETURN v_rev - 1;
    END IF;
    UPDATE kv_meta SET rev = v_rev;
    -- A revision a watcher has seen must survive a crash: an asynchronous
    -- commit could be lost and its number reused for another change.
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'local', true);
    END IF;
    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, v_rev::text);
    END IF;
    RETURN v_rev;
END
$$;

-- The reader role: SELECT on the tables (List, Get, Watch; LISTEN needs no
-- privilege), nothing else. It is shared by every pgkv schema of the
-- cluster. A migrating role without CREATEROLE skips it with a notice;
-- create the role yourself and rerun the grants then.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lenkwerk_kv_reader') THEN
        BEGIN
            CREATE ROLE lenkwerk_kv_reader NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL; -- created concurrently
            WHEN insufficient_privilege THEN
                RAISE NOTICE 'pgkv: cannot create role lenkwerk_kv_reader (no CREATEROLE); skipping reader grants';
                RETURN;
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO lenkwerk_kv_reader', current_schema());
    EXECUTE format('GRANT SELECT ON TABLE %I.kv, %I.kv_log, %I.kv_meta, %I.pgkv_schema_migrations TO lenkwerk_kv_reader',
        current_schema(), current_schema(), current_schema(), current_schema());
END
$$;
