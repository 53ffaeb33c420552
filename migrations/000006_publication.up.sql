-- The publication the agent streams, for exactly the six Lenkwerk tables
-- (time_bound is an interface without rows and is left out: listing it
-- without ONLY would publish its children a second time).
--
-- Publication and slot names are configurable, since golang-migrate has no
-- templating: they come from the custom settings lenkwerk.publication_name
-- and lenkwerk.slot_name (defaults bagger_lw_storage and lw_agent).
-- `lenkwerk migrate --publication P --slot S` sets them on its connection;
-- with the stock migrate CLI add them to the URL
--   pgx5://...?lenkwerk.publication_name=P&lenkwerk.slot_name=S
-- or set them for the database beforehand
--   ALTER DATABASE lenkwerk SET lenkwerk.slot_name = 'S';
--
-- The names chosen are recorded in lenkwerk.setting, so migration 7 and the
-- down migrations act on what was created, whatever the connection says
-- later; a connection asking for other names is refused there.
--
-- A local copy (lenkwerk.role = 'copy', see migration 1) gets no
-- publication: it records role = copy instead of the names (so migration 7
-- creates no slot) and gets lenkwerk.follow_state, where `lenkwerk follow`
-- keeps the store revision it has applied.
CREATE SCHEMA lenkwerk AUTHORIZATION lenkwerk_admin;
COMMENT ON SCHEMA lenkwerk IS 'Lenkwerk''s own bookkeeping (not Bagger state, not published).';

CREATE TABLE lenkwerk.setting (
    name  text PRIMARY KEY,
    value text NOT NULL
);
ALTER TABLE lenkwerk.setting OWNER TO lenkwerk_admin;
COMMENT ON TABLE lenkwerk.setting IS
$$How this database was provisioned: publication_name and slot_name, as chosen
when migration 6 ran (lenkwerk migrate --publication/--slot, or the
lenkwerk.publication_name / lenkwerk.slot_name settings).$$;

DO $$
DECLARE
    role text := coalesce(nullif(current_setting('lenkwerk.role', true), ''), 'source');
    pub  text := coalesce(nullif(current_setting('lenkwerk.publication_name', true), ''), 'bagger_lw_storage');
    slot text := coalesce(nullif(current_setting('lenkwerk.slot_name', true), ''), 'lw_agent');
BEGIN
    IF role = 'copy' THEN
        INSERT INTO lenkwerk.setting (name, value) VALUES ('role', 'copy');
        CREATE TABLE lenkwerk.follow_state (
            prefix   text PRIMARY KEY,
            store    text NOT NULL,
            revision bigint NOT NULL,
            updated  timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE lenkwerk.follow_state OWNER TO lenkwerk_admin;
        COMMENT ON TABLE lenkwerk.follow_state IS
            'lenkwerk follow: the store revision applied to this copy, per key prefix, committed with the rows it brought.';
        RETURN;
    END IF;
    -- Plain identifiers only: URL query values (the stock CLI's way to set
    -- these) cannot carry much else intact through golang-migrate.
    IF pub !~ '^[a-z_][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'publication name "%" is invalid', pub
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'Use lower case letters, digits and the underscore (not first), at most 63 characters.';
    END IF;
    -- Checked here, before anything is created, rather than by
    -- pg_create_logical_replication_slot in migration 7.
    IF slot !~ '^[a-z0-9_]{1,63}$' THEN
        RAISE EXCEPTION 'replication slot name "%" is invalid', slot
            USING ERRCODE = 'invalid_name',
                  DETAIL = 'Slot names may contain only lower case letters, numbers and the underscore, at most 63 characters.';
    END IF;
    INSERT INTO lenkwerk.setting (name, value)
    VALUES ('publication_name', pub), ('slot_name', slot);
    EXECUTE format(
        'CREATE PUBLICATION %I FOR TABLE storage.postgres_instance, storage.servermap, '
        'storage.dimension, storage.index, storage.index_field, storage.config', pub);
    EXECUTE format('COMMENT ON PUBLICATION %I IS %L', pub,
        'Lenkwerk: the Bagger cluster state the Lenkwerk agent mirrors into the key-value store (slot ' || slot || ').');
END
$$;
