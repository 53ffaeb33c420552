-- Lenkwerk streams this database through a logical replication slot, which
-- PostgreSQL only allows with wal_level = logical. Refuse before anything is
-- created: this migration writes nothing, so when it fails nothing of
-- Lenkwerk has been applied.
--
-- `lenkwerk migrate` checks the same before it touches the database. The
-- stock migrate CLI records this version as dirty when the check fails;
-- since nothing was applied, `migrate ... force -1` (lenkwerk: `lenkwerk
-- migrate force 0`) clears that after wal_level has been fixed.
DO $$
BEGIN
    IF current_setting('wal_level') <> 'logical' THEN
        RAISE EXCEPTION 'Lenkwerk needs wal_level = logical, but this server has wal_level = %', current_setting('wal_level')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Nothing was changed: the Lenkwerk agent reads a logical replication slot, which needs wal_level = logical.',
                  HINT = 'As a superuser run ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL and migrate again. With the stock migrate CLI clear the dirty version first: migrate ... force -1 (lenkwerk migrate force 0).';
    END IF;
END
$$;
