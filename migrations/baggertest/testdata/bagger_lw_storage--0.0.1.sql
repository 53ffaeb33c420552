-- Test fixture for Lenkwerk's adoption tests: the objects of Bagger's
-- extension bagger_lw_storage 0.0.1 (onemoredata/bagger,
-- sql/lenkwerk/storage/sql/bagger_lw_storage--0.0.1.sql), written for
-- Lenkwerk from that published schema: the same schema, tables, columns,
-- constraints, sequences, function signatures and publication, with
-- function bodies that behave like Bagger's (its comments are left out).
-- Never install this anywhere but a test server.

CREATE SCHEMA IF NOT EXISTS storage;

CREATE TABLE storage.time_bound (
    valid_from  timestamp NOT NULL DEFAULT '-infinity',
    valid_until timestamp NOT NULL DEFAULT 'infinity',
    CHECK (valid_from IS NULL) NO INHERIT
);

CREATE FUNCTION storage.validrange(storage.time_bound)
RETURNS tsrange LANGUAGE sql
RETURN tsrange($1.valid_from, $1.valid_until, '[)');

CREATE TABLE storage.postgres_instance (
    id       serial NOT NULL UNIQUE,
    host     varchar,
    port     int,
    username varchar NOT NULL,
    status   smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (host, port),
    CHECK (status >= 0 AND status <= 3)
);
SELECT pg_catalog.pg_extension_config_dump('storage.postgres_instance', '');
SELECT pg_catalog.pg_extension_config_dump('storage.postgres_instance_id_seq', '');

CREATE TABLE storage.servermap (
    id         serial PRIMARY KEY,
    server_map json NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('storage.servermap', '');
SELECT pg_catalog.pg_extension_config_dump('storage.servermap_id_seq', '');

CREATE TABLE storage.dimension (
    id          serial NOT NULL UNIQUE,
    ordinality  int NOT NULL UNIQUE DEFERRABLE INITIALLY DEFERRED,
    default_val varchar NULL DEFAULT 'notexist',
    fieldname   varchar PRIMARY KEY
) INHERITS (storage.time_bound);
SELECT pg_catalog.pg_extension_config_dump('storage.dimension', '');
SELECT pg_catalog.pg_extension_config_dump('storage.dimension_id_seq', '');

CREATE TABLE storage.index (
    id            serial NOT NULL UNIQUE,
    indexname     varchar(16) DEFAULT 'bagger_idx',
    access_method varchar NOT NULL,
    tablespc      varchar NOT NULL DEFAULT 'pg_default',
    PRIMARY KEY (indexname)
) INHERITS (storage.time_bound);
SELECT pg_catalog.pg_extension_config_dump('storage.index', '');
SELECT pg_catalog.pg_extension_config_dump('storage.index_id_seq', '');

CREATE TABLE storage.index_field (
    id         serial NOT NULL UNIQUE,
    index_id   int NOT NULL REFERENCES storage.index (id),
    ordinality int,
    expression varchar NOT NULL,
    PRIMARY KEY (index_id, ordinality) DEFERRABLE INITIALLY DEFERRED
) INHERITS (storage.time_bound);
SELECT pg_catalog.pg_extension_config_dump('storage.index_field', '');
SELECT pg_catalog.pg_extension_config_dump('storage.index_field_id_seq', '');

CREATE TABLE storage.config (
    id    serial NOT NULL UNIQUE,
    key   text PRIMARY KEY,
    value json NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('storage.config', '');
SELECT pg_catalog.pg_extension_config_dump('storage.config_id_seq', '');

-- Instances

CREATE FUNCTION storage.register_pg_instance(in_host text, in_port int, in_username text)
RETURNS storage.postgres_instance LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.postgres_instance (host, port, username)
    VALUES (in_host, in_port, in_username) RETURNING *;
END;

CREATE FUNCTION storage.set_pg_instance_status(in_id int, in_status int)
RETURNS storage.postgres_instance LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.postgres_instance SET status = in_status WHERE id = in_id RETURNING *;
END;

CREATE FUNCTION storage.get_pg_instance_by_id(in_id int)
RETURNS storage.postgres_instance LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.postgres_instance WHERE id = in_id;
END;

CREATE FUNCTION storage.get_pg_instance_by_host_and_port(in_host text, in_port int)
RETURNS storage.postgres_instance LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.postgres_instance WHERE host = in_host AND port = in_port;
END;

CREATE FUNCTION storage.list_pg_instances()
RETURNS SETOF storage.postgres_instance LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.postgres_instance;
END;

-- Dimensions

CREATE FUNCTION storage.get_dimensions()
RETURNS SETOF storage.dimension LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.dimension ORDER BY ordinality;
END;

CREATE FUNCTION storage.append_dimension(in_fieldname varchar, in_default_val varchar,
                                         in_valid_from timestamp, in_valid_until timestamp)
RETURNS storage.dimension LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.dimension (ordinality, fieldname, default_val, valid_from, valid_until)
    SELECT coalesce(max(ordinality) + 1, 0), in_fieldname, coalesce(in_default_val, 'notexist'),
           coalesce(in_valid_from, '-infinity'), coalesce(in_valid_until, 'infinity')
      FROM storage.dimension
    RETURNING *;
END;

CREATE FUNCTION storage.insert_dimension(in_ordinality int, in_fieldname varchar, in_default_val varchar,
                                         in_valid_from timestamp, in_valid_until timestamp)
RETURNS storage.dimension LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.dimension SET ordinality = ordinality + 1 WHERE ordinality >= in_ordinality;
    INSERT INTO storage.dimension (ordinality, fieldname, default_val, valid_from, valid_until)
    VALUES (in_ordinality, in_fieldname, coalesce(in_default_val, 'notexist'),
            coalesce(in_valid_from, '-infinity'), coalesce(in_valid_until, 'infinity'))
    RETURNING *;
END;

CREATE FUNCTION storage.expire_dimension(in_id int, in_valid_until timestamp)
RETURNS storage.dimension LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.dimension SET valid_until = in_valid_until WHERE id = in_id RETURNING *;
END;

-- Indexes

CREATE FUNCTION storage.insert_index_field(in_index_id int, in_ordinality int, in_expression varchar,
                                           in_valid_from timestamp, in_valid_until timestamp)
RETURNS storage.index_field LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.index_field SET ordinality = ordinality + 1
     WHERE index_id = in_index_id AND ordinality >= in_ordinality;
    INSERT INTO storage.index_field (index_id, ordinality, expression, valid_from, valid_until)
    VALUES (in_index_id, in_ordinality, in_expression, in_valid_from, in_valid_until)
    RETURNING *;
END;

CREATE FUNCTION storage.append_index_field(in_index_id int, in_expression varchar,
                                           in_valid_from timestamp, in_valid_until timestamp)
RETURNS storage.index_field LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.index_field (index_id, expression, ordinality, valid_from, valid_until)
    SELECT in_index_id, in_expression, coalesce(max(ordinality) + 1, 0),
           coalesce(in_valid_from, '-infinity'), coalesce(in_valid_until, 'infinity')
      FROM storage.index_field WHERE index_id = in_index_id
    RETURNING *;
END;

CREATE FUNCTION storage.expire_index_field(in_id int, in_valid_until timestamp)
RETURNS storage.index_field LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.index_field SET valid_until = in_valid_until WHERE id = in_id RETURNING *;
END;

CREATE FUNCTION storage.expire_index(in_id int, in_valid_until timestamp)
RETURNS storage.index LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.index SET valid_until = in_valid_until WHERE id = in_id RETURNING *;
END;

CREATE FUNCTION storage.get_index_fields(in_index_id int)
RETURNS SETOF storage.index_field LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.index_field WHERE index_id = in_index_id;
END;

CREATE FUNCTION storage.get_index(in_indexname text)
RETURNS storage.index LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.index WHERE indexname = in_indexname;
END;

CREATE FUNCTION storage.save_index(in_indexname text, in_access_method text, in_tablespc text,
                                   in_valid_until timestamp, in_valid_from timestamp)
RETURNS storage.index LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.index (indexname, access_method, tablespc, valid_until, valid_from)
    VALUES (in_indexname, in_access_method, coalesce(in_tablespc, 'pg_default'),
            coalesce(in_valid_until, 'infinity'), coalesce(in_valid_from, '-infinity'))
    ON CONFLICT (indexname)
    DO UPDATE SET access_method = in_access_method, valid_until = in_valid_until
    RETURNING *;
END;

-- Config

CREATE FUNCTION storage.get_config(in_key text)
RETURNS storage.config LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.config WHERE key = in_key;
END;

CREATE FUNCTION storage.save_config(in_key text, in_value json)
RETURNS storage.config LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.config (key, value) VALUES (in_key, in_value)
    ON CONFLICT (key) DO UPDATE SET value = in_value
    RETURNING *;
END;

-- Servermaps

CREATE FUNCTION storage.get_servermap(in_id int)
RETURNS storage.servermap LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.servermap WHERE id = in_id;
END;

CREATE FUNCTION storage.most_recent_servermap()
RETURNS storage.servermap LANGUAGE sql
BEGIN ATOMIC
    SELECT * FROM storage.servermap ORDER BY id DESC LIMIT 1;
END;

CREATE FUNCTION storage.save_servermap(in_server_map json)
RETURNS storage.servermap LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.servermap (server_map) VALUES (in_server_map) RETURNING *;
END;

CREATE FUNCTION storage.servermap_rotate_num()
RETURNS int LANGUAGE sql
BEGIN ATOMIC
    SELECT count(*) FROM storage.postgres_instance GROUP BY host ORDER BY 1 DESC LIMIT 1;
END;

-- The storage nodes' side, installed on every server with the extension.
-- Like Bagger's: an INSERT, and on a unique violation a delete by id whose
-- expression names a column that does not exist here (so every update of
-- an existing row fails), then the INSERT again.
CREATE FUNCTION storage.inbound_from_kvstore(in_relname regclass, in_value json)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('INSERT INTO %s SELECT * FROM json_populate_record(NULL::%s, $1)', in_relname, in_relname)
      USING in_value;
EXCEPTION WHEN unique_violation THEN
    EXECUTE format('DELETE FROM %s WHERE id = %L', in_relname, in_value->>id::int);
    EXECUTE format('INSERT INTO %s SELECT * FROM json_populate_record(NULL::%s, $1)', in_relname, in_relname)
      USING in_value;
END;
$$;

-- Drops the storage node's partitions older than config retain_hrs (its
-- catalog query is broken as Bagger's is: it only runs with retain_hrs 0).
CREATE FUNCTION storage.enforce_retention()
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    retain_hrs int;
    rel regclass;
BEGIN
    SELECT trim(both '"' FROM value::text)::int INTO retain_hrs FROM storage.config WHERE key = 'retain_hrs';
    IF NOT FOUND THEN
        retain_hrs := 24;
    END IF;
    IF retain_hrs = 0 THEN
        RETURN;
    END IF;
    FOR rel IN SELECT oid FROM regclass WHERE relnamespace::regnamespace::text LIKE 'partition%' LOOP
        EXECUTE format('DROP TABLE %s', rel);
    END LOOP;
END;
$$;

-- Not a member of the extension (PostgreSQL 15 records no publication as
-- one), but created by its script.
CREATE PUBLICATION bagger_lw_storage
    FOR TABLE storage.postgres_instance, storage.index, storage.index_field,
              storage.dimension, storage.servermap, storage.config;
