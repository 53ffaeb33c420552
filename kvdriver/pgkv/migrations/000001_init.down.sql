-- The role lenkwerk_kv_reader is shared by every pgkv schema; it stays.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'lenkwerk_kv_reader') THEN
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM lenkwerk_kv_reader', current_schema());
    END IF;
END
$$;
DROP FUNCTION kv_apply(text[], bytea[], text);
DROP TABLE kv_log;
DROP TABLE kv;
DROP TABLE kv_meta;
