-- pgkv schema, version 4: writers no longer wait for their WAL flush
-- inside the revision lock while other writers wait for it. kv_apply then
-- commits asynchronously (a writer alone, or one that a synchronous standby
-- must confirm, still commits synchronously), kv_sync makes such a write
-- durable after its commit and sends the notification, and readers wait
-- until what they read is flushed (the driver compares the WAL flush
-- position with the insert position read in the same statement). Before,
-- each writer's fsync happened while it held the lock, so writers of
-- separate stores queued for one fsync each.

-- sync_token authenticates the durability notifications: "<rev> <tag>",
-- tag = hex(sha256("<rev> <token>")), tells the schema's readers that
-- revision rev is durable. Anyone may NOTIFY, and anyone may LISTEN (so the
-- token itself never travels); only roles that can read kv_meta can make a
-- tag, and a tag seen for one revision makes none for another.
ALTER TABLE kv_meta ADD COLUMN sync_token text NOT NULL DEFAULT gen_random_uuid()::text;

-- kv_apply as in version 2 (the same arguments and checks), but its commit
-- is asynchronous when another writer is waiting for the revision lock.
-- Every writer holds a shared transaction advisory lock of the schema while
-- in kv_apply; one that can then upgrade it to exclusive is alone, and
-- commits synchronously as before (nobody waits for its flush; writers
-- arriving meanwhile wait for it as they would for the row lock), notifying
-- "<rev> <token>" after the flush. Otherwise the commit does not wait for
-- its flush and sends no notification: the driver's kv_sync does both.
-- The first call's choice holds for its whole transaction
-- (lenkwerk_pgkv.mode); the session setting lenkwerk_pgkv.pending tells
-- the driver (read in the same statement) whether the write needs kv_sync.
CREATE OR REPLACE FUNCTION kv_apply(p_keys text[], p_values bytea[], p_channel text, p_req_keys text[] DEFAULT '{}', p_req_revs bigint[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_rev     bigint;
    v_changed bigint;
    v_key     text;
    v_want    bigint;
    v_have    bigint;
    v_mode    text;
    v_token   text;
BEGIN
    -- The lock is taken before any key is touched, so every writer locks in
    -- the same order (no deadlocks) and holds it until commit.
    -- The one-key (bigint) lock: in a Lenkwerk database the two-key
    -- functions are the agent role's alone (its migration 8), the one-key
    -- ones stay with PUBLIC.
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('lenkwerk_pgkv ' || current_schema(), 0));
    SELECT rev + 1, sync_token INTO STRICT v_rev, v_token FROM kv_meta FOR NO KEY UPDATE;

    -- Checked under the lock: no writer can change a required key between
    -- the check and this batch's commit.
    FOR v_key, v_want IN SELECT r.key, r.rev FROM unnest(p_req_keys, p_req_revs) AS r(key, rev) LOOP
        SELECT coalesce((SELECT mod_rev FROM kv WHERE key = v_key COLLATE "C"), 0) INTO v_have;
        IF v_have <> v_want THEN
            RAISE EXCEPTION 'pgkv: key % is at revision %, required %', v_key, v_have, v_want
                USING ERRCODE = 'LWK01';
        END IF;
    END LOOP;

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
        -- No revision taken: the head it returns may be another writer's
        -- asynchronous commit, so the driver must not take it as durable.
        PERFORM set_config('lenkwerk_pgkv.pending', 'unknown', false);
        RETURN v_rev - 1;
    END IF;
    UPDATE kv_meta SET rev = v_rev;
    -- A writer that others wait for does not keep them waiting through
    -- its WAL flush: it commits asynchronously (the revision lock is
    -- released as soon as the commit record is written, and the flushes of
    -- many writers group). A revision a reader has seen must still survive
    -- a crash (an asynchronous commit can be lost and its number reused for
    -- another change): the driver makes the write durable with kv_sync
    -- before Apply returns, and its readers return only what is flushed.
    -- With a synchronous standby that the session waits for, the commit
    -- always waits inside the lock as before: only that makes a revision
    -- visible after it reached the standby.
    v_mode := current_setting('lenkwerk_pgkv.mode', true);
    IF v_mode IS NULL OR v_mode = '' THEN
        IF current_setting('synchronous_commit') NOT IN ('off', 'local')
           AND current_setting('synchronous_standby_names') <> '' THEN
            v_mode := 'sync';
        ELSIF pg_try_advisory_xact_lock(hashtextextended('lenkwerk_pgkv ' || current_schema(), 0)) THEN
            v_mode := 'sync';
        ELSE
            v_mode := 'async';
        END IF;
        PERFORM set_config('lenkwerk_pgkv.mode', v_mode, true);
    END IF;
    IF v_mode = 'async' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM set_config('lenkwerk_pgkv.pending', 'yes', false);
    ELSE
        IF current_setting('synchronous_commit') = 'off' THEN
            PERFORM set_config('synchronous_commit', 'local', true);
        END IF;
        PERFORM set_config('lenkwerk_pgkv.pending', 'no', false);
        IF p_channel IS NOT NULL THEN
            PERFORM pg_notify(p_channel, v_rev::text || ' ' || encode(sha256(convert_to(v_rev::text || ' ' || v_token, 'UTF8')), 'hex'));
        END IF;
    END IF;
    RETURN v_rev;
END
$$;

-- kv_sync makes every commit before it durable and returns the store
-- revision, which is then durable. The driver calls it after each write's
-- asynchronous commit, and readers call it when the WAL they
-- must wait for is not flushed soon. If the WAL is already flushed as far
-- as it is written, there is nothing to do; otherwise a transactional
-- logical message gives this transaction WAL of its own, so its commit
-- flushes (synchronous_commit at least local), covering the earlier commits;
-- a commit that only had an XID would not flush. With p_channel it then
-- notifies "<rev> <token>": listeners receive it only after the commit,
-- hence after the flush.
CREATE FUNCTION kv_sync(p_channel text DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_rev   bigint;
    v_token text;
BEGIN
    -- First the revision, then the positions: every commit this snapshot
    -- sees is before the insert position read after it.
    SELECT rev, sync_token INTO STRICT v_rev, v_token FROM kv_meta;
    IF pg_current_wal_flush_lsn() < pg_current_wal_insert_lsn() THEN
        IF current_setting('synchronous_commit') = 'off' THEN
            PERFORM set_config('synchronous_commit', 'local', true);
        END IF;
        PERFORM pg_logical_emit_message(true, 'lenkwerk-pgkv-sync', '');
    END IF;
    IF p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, v_rev::text || ' ' || encode(sha256(convert_to(v_rev::text || ' ' || v_token, 'UTF8')), 'hex'));
    END IF;
    RETURN v_rev;
END
$$;
