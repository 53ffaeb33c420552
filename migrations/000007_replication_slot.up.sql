-- The logical replication slot the agent streams (plugin pgoutput), under the
-- name recorded by migration 6. It has a migration of its own because
-- pg_create_logical_replication_slot refuses to run in a transaction that
-- has already written, and each migration file runs as one transaction.
--
-- A slot retains WAL until its consumer confirms it: a slot nobody streams
-- fills the disk. Run the agent, watch sql/monitor-slot.sql, and consider
-- max_slot_wal_keep_size. A slot created like this exports no snapshot; the
-- agent's initial sync takes care of that. Creating it waits until every
-- transaction running on the server has finished.
--
-- A local copy (role copy, recorded by migration 6) has no slot name
-- recorded, hence no slot: the DO block returns at once and the SELECT
-- below does not call the function.
DO $$
DECLARE
    slot  text := (SELECT value FROM lenkwerk.setting WHERE name = 'slot_name');
    asked text := nullif(current_setting('lenkwerk.slot_name', true), '');
    existing record;
BEGIN
    IF EXISTS (SELECT FROM lenkwerk.setting WHERE name = 'role' AND value = 'copy') THEN
        RETURN;
    END IF;
    IF asked IS DISTINCT FROM NULL AND asked IS DISTINCT FROM slot THEN
        RAISE EXCEPTION 'this database''s slot was recorded as "%", but lenkwerk.slot_name asks for "%"', slot, asked
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'The names are chosen when migration 6 runs; migrate down to 5 and up again to change them.';
    END IF;
    SELECT database, plugin INTO existing FROM pg_catalog.pg_replication_slots WHERE slot_name = slot;
    IF FOUND THEN
        -- Reusing a slot of unknown position and origin could stream from
        -- before the publication existed; refuse instead.
        RAISE EXCEPTION 'replication slot "%" already exists (database %, plugin %)', slot,
                coalesce(existing.database::text, 'none'), coalesce(existing.plugin, 'none')
            USING ERRCODE = 'duplicate_object',
                  DETAIL = format('Drop it with SELECT pg_drop_replication_slot(%L) if nothing uses it, or choose another name (--slot).', slot);
    END IF;
END
$$;

-- At top level, not in the DO block: PostgreSQL 15 fails with "snapshot
-- reference ... is not owned by resource owner" when a slot created from
-- PL/pgSQL has to wait for concurrent transactions. The name is read by a
-- scalar subquery, evaluated before the call: a scan left open across the
-- call fails the same way ("buffer … is not owned by resource owner"). A
-- copy has no slot name recorded, and the function, being strict, is then
-- not called at all (the statement returns one row of NULLs).
SELECT slot_name, lsn
  FROM pg_catalog.pg_create_logical_replication_slot(
           (SELECT value FROM lenkwerk.setting WHERE name = 'slot_name'), 'pgoutput');
