-- Lenkwerk's roles. Roles belong to the whole cluster, not to this database:
-- several Lenkwerk databases (or a previous install) may already have
-- created them, so each is created only when missing, and a concurrent
-- migration creating the same role is tolerated. The down migration leaves
-- them in place (see there).
--
--   lenkwerk_admin   owns schema storage and everything in it (NOLOGIN;
--                    grant it to the people who change the schema).
--   lenkwerk_config  the configuration tools: may call the storage.*
--                    functions and write the configuration tables, nothing
--                    else (NOLOGIN; grant it to operators' login roles).
--   lenkwerk_agent   the replication agent: LOGIN REPLICATION and SELECT on
--                    the published tables only. No password is set here:
--                    use certificate or GSSAPI authentication, or set one
--                    yourself (never store passwords in storage.*).
--
-- Creating a REPLICATION role needs a superuser (PostgreSQL 15), so run the
-- migrations as one.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM (VALUES
            ('lenkwerk_admin', false,
             'Lenkwerk: owns schema storage (the Bagger cluster state). Grant it to schema maintainers.'),
            ('lenkwerk_config', false,
             'Lenkwerk: calls the storage.* configuration functions and writes the configuration tables; cannot change the schema.'),
            ('lenkwerk_agent', true,
             'Lenkwerk: the replication agent (LOGIN REPLICATION, SELECT on the published storage tables only).')
        ) AS v(name, agent, note)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r.name);
                -- Only the creator comments: a comment is a shared catalog row
                -- that concurrent migrations would otherwise both update.
                EXECUTE format('COMMENT ON ROLE %I IS %L', r.name, r.note);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- a concurrent migration of another database created it
            END;
        END IF;
        -- An existing agent role must still be able to log in and replicate.
        -- Alter only when needed; if a concurrent migration altered it first
        -- ("tuple concurrently updated"), accept its result.
        IF r.agent AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                WHERE rolname = r.name AND rolcanlogin AND rolreplication) THEN
            BEGIN
                EXECUTE format('ALTER ROLE %I LOGIN REPLICATION', r.name);
            EXCEPTION WHEN internal_error THEN
                IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                        WHERE rolname = r.name AND rolcanlogin AND rolreplication) THEN
                    RAISE;
                END IF;
            END;
        END IF;
    END LOOP;
END
$$;
