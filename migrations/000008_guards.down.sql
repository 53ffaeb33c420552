-- Back to the state after migration 7: the tables take any row again and
-- every role may take two-key advisory locks in this database (PostgreSQL's
-- default), the agent's lock included.
DO $$
DECLARE
    t text;
    f regprocedure;
BEGIN
    IF EXISTS (SELECT FROM lenkwerk.setting WHERE name = 'role' AND value = 'copy') THEN
        RETURN;
    END IF;
    FOREACH t IN ARRAY ARRAY['config', 'postgres_instance', 'servermap', 'dimension', 'index', 'index_field'] LOOP
        EXECUTE format('ALTER TABLE storage.%I DROP CONSTRAINT %I', t, t || '_mirrorable');
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
              WHERE p.pronamespace = 'pg_catalog'::regnamespace
                AND p.proname ~ '^pg_(try_)?advisory_(xact_)?lock(_shared)?$'
                AND p.proargtypes = '23 23'::oidvector LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM lenkwerk_agent', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f);
    END LOOP;
END
$$;

DROP FUNCTION storage.unmirrorable_rows();
DROP FUNCTION storage.mirrorable(storage.config);
DROP FUNCTION storage.mirrorable(storage.postgres_instance);
DROP FUNCTION storage.mirrorable(storage.servermap);
DROP FUNCTION storage.mirrorable(storage.dimension);
DROP FUNCTION storage.mirrorable(storage.index);
DROP FUNCTION storage.mirrorable(storage.index_field);
DROP FUNCTION storage.mirror_row(text, text, text, anyelement);
DROP FUNCTION storage.mirror_key_segment(text, text, text, int);
DROP FUNCTION storage.mirror_label(text);
