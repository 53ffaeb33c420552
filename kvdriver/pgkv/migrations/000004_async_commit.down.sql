-- Back to version 3: kv_apply commits synchronously inside the revision
-- lock and notifies itself; no kv_sync.

DROP FUNCTION kv_sync(text);
ALTER TABLE kv_meta DROP COLUMN sync_token;

-- kv_apply as in version 2.
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
BEGIN
    -- The lock is taken before any key is touched, so every writer locks in
    -- the same order (no deadlocks) and holds it until commit.
    SELECT rev + 1 INTO STRICT v_rev FROM kv_meta FOR NO KEY UPDATE;

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

