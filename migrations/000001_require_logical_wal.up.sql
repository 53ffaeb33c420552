-- Lenkwerk streams this database through a logical replication slot, which
-- PostgreSQL only allows with wal_level = logical. Refuse before anything is
-- created: this migration writes nothing, so when it fails nothing of
-- Lenkwerk has been applied.
--
-- `lenkwerk migrate` checks the same before it touches the database. The
-- stock migrate CLI records this version as dirty when the check fails;
-- since nothing was applied, `migrate ... force -1` (lenkwerk: `lenkwerk
-- migrate force 0`) clears that after wal_level has been fixed.
--
-- A local copy (the custom setting lenkwerk.role = 'copy', set by `lenkwerk
-- follow` or given in the URL, ?lenkwerk.role=copy) has no publication and
-- no slot (migrations 6 and 7 skip them), so any wal_level will do there.
--
-- A database where Bagger's own extension bagger_lw_storage is installed
-- already has schema storage: `lenkwerk migrate adopt` takes it over,
-- keeping every row, which migration 3 would fail to do.
DO $$
DECLARE
    role text := coalesce(nullif(current_setting('lenkwerk.role', true), ''), 'source');
BEGIN
    IF role NOT IN ('source', 'copy') THEN
        RAISE EXCEPTION 'lenkwerk.role is "%", want "source" (the default) or "copy"', role
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Nothing of Lenkwerk was applied. The stock migrate CLI marks version 1 dirty; clear that with: migrate ... force -1 (lenkwerk migrate force 0).';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'bagger_lw_storage') THEN
        RAISE EXCEPTION 'Bagger''s extension bagger_lw_storage is installed in this database: run lenkwerk migrate adopt (with --copy on a storage node), which takes its objects over keeping every row'
            USING ERRCODE = 'duplicate_schema',
                  DETAIL = 'Nothing of Lenkwerk was applied. The stock migrate CLI marks version 1 dirty; clear that with: migrate ... force -1 (lenkwerk migrate force 0).';
    END IF;
    IF role = 'source' AND current_setting('wal_level') <> 'logical' THEN
        -- The advice is in the message and DETAIL, which the stock CLI
        -- prints (it drops HINT).
        RAISE EXCEPTION 'Lenkwerk needs wal_level = logical, but this server has wal_level = %: as a superuser run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL and migrate again', current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Nothing of Lenkwerk was applied. The stock migrate CLI marks version 1 dirty; clear that with: migrate ... force -1 (lenkwerk migrate force 0).';
    END IF;
END
$$;
