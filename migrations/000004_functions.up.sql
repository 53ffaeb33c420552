-- The configuration-tool functions, with the names, arguments and results
-- of Bagger's own (its Perl tools call them by these names). They run with
-- the caller's rights (SECURITY INVOKER), so lenkwerk_config needs, and has,
-- the table privileges migration 5 grants; SQL-standard bodies (BEGIN
-- ATOMIC) are bound to the tables when created, so a changed search_path
-- cannot redirect them.
SET LOCAL ROLE lenkwerk_admin;

---------------------------------------------------------------------------
-- Instances
---------------------------------------------------------------------------

CREATE FUNCTION storage.register_pg_instance(in_host text, in_port int, in_username text)
RETURNS storage.postgres_instance LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.postgres_instance (host, port, username)
    VALUES (in_host, in_port, in_username)
    RETURNING *;
END;

COMMENT ON FUNCTION storage.register_pg_instance(text, int, text) IS
$$Registers a PostgreSQL instance as a storage node and returns its row.

By design the node is created offline (status 0); bring it online with
set_pg_instance_status. Arguments:
 - in_host:     host name or IP address of the instance
 - in_port:     port the instance listens on
 - in_username: role Bagger (Schaufel) connects as; never a password$$;

-- Unlike Bagger's (which leaves the refusal to the table's CHECK and its
-- generic "violates check constraint" error), this names the valid values.
CREATE FUNCTION storage.set_pg_instance_status(in_id int, in_status int)
RETURNS storage.postgres_instance LANGUAGE plpgsql
AS $$
DECLARE
    result storage.postgres_instance;
BEGIN
    IF in_status IS NULL OR in_status NOT BETWEEN 0 AND 3 THEN
        RAISE EXCEPTION 'invalid postgres_instance status %: must be 0 (offline), 1 (read-only), 2 (write-only) or 3 (online)',
                coalesce(in_status::text, 'NULL')
            USING ERRCODE = 'check_violation',
                  HINT = 'status is a bit field: bit 0 can read, bit 1 can write.';
    END IF;
    UPDATE storage.postgres_instance
       SET status = in_status
     WHERE id = in_id
    RETURNING * INTO result;
    RETURN result; -- all NULL when no instance has in_id, as in Bagger
END
$$;

COMMENT ON FUNCTION storage.set_pg_instance_status(int, int) IS
$$Sets the status of a storage node and returns its row as stored (NULL when no
node has in_id). Status: 0 offline, 1 read-only, 2 write-only, 3 online; other
values are refused.$$;

CREATE FUNCTION storage.get_pg_instance_by_id(in_id int)
RETURNS storage.postgres_instance LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.postgres_instance WHERE id = in_id;
END;

COMMENT ON FUNCTION storage.get_pg_instance_by_id(int) IS 'The storage node with this id, or NULL.';

CREATE FUNCTION storage.get_pg_instance_by_host_and_port(in_host text, in_port int)
RETURNS storage.postgres_instance LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.postgres_instance WHERE host = in_host AND port = in_port;
END;

COMMENT ON FUNCTION storage.get_pg_instance_by_host_and_port(text, int) IS
'The storage node at this host and port, or NULL.';

CREATE FUNCTION storage.list_pg_instances()
RETURNS SETOF storage.postgres_instance LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.postgres_instance;
END;

COMMENT ON FUNCTION storage.list_pg_instances() IS 'All registered storage nodes.';

---------------------------------------------------------------------------
-- Dimensions
---------------------------------------------------------------------------

CREATE FUNCTION storage.get_dimensions()
RETURNS SETOF storage.dimension LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.dimension ORDER BY ordinality;
END;

COMMENT ON FUNCTION storage.get_dimensions() IS
$$The dimensions in order. The ordinality is the order of evaluation for
partitioning, and all dimensions are evaluated.$$;

CREATE FUNCTION storage.append_dimension(in_fieldname varchar, in_default_val varchar,
                                         in_valid_from timestamp, in_valid_until timestamp)
RETURNS storage.dimension LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.dimension (ordinality, fieldname, default_val, valid_from, valid_until)
    SELECT coalesce(max(ordinality) + 1, 0), in_fieldname,
           coalesce(in_default_val, 'notexist'),
           coalesce(in_valid_from, '-infinity'),
           coalesce(in_valid_until, 'infinity')
      FROM storage.dimension
    RETURNING *;
END;

COMMENT ON FUNCTION storage.append_dimension(varchar, varchar, timestamp, timestamp) IS
$$Adds a dimension after the last one and returns the row as saved. NULL
arguments take the defaults ('notexist', -infinity, infinity).$$;

CREATE FUNCTION storage.insert_dimension(in_ordinality int, in_fieldname varchar, in_default_val varchar,
                                         in_valid_from timestamp, in_valid_until timestamp)
RETURNS storage.dimension LANGUAGE sql
BEGIN ATOMIC
    -- The shift is why the ordinality UNIQUE constraint is deferred.
    UPDATE storage.dimension
       SET ordinality = ordinality + 1
     WHERE ordinality >= in_ordinality;
    INSERT INTO storage.dimension (ordinality, fieldname, default_val, valid_from, valid_until)
    VALUES (in_ordinality, in_fieldname,
            coalesce(in_default_val, 'notexist'),
            coalesce(in_valid_from, '-infinity'),
            coalesce(in_valid_until, 'infinity'))
    RETURNING *;
END;

COMMENT ON FUNCTION storage.insert_dimension(int, varchar, varchar, timestamp, timestamp) IS
$$Inserts a dimension at in_ordinality and returns the row as saved. The
ordinality of every dimension at or after in_ordinality is incremented.$$;

CREATE FUNCTION storage.expire_dimension(in_id int, in_valid_until timestamp)
RETURNS storage.dimension LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.dimension
       SET valid_until = in_valid_until
     WHERE id = in_id
    RETURNING *;
END;

COMMENT ON FUNCTION storage.expire_dimension(int, timestamp) IS
'Ends the dimension''s validity at in_valid_until and returns its row (NULL when no dimension has in_id).';

---------------------------------------------------------------------------
-- Indexes
---------------------------------------------------------------------------

-- Bagger passes NULL validity through to the NOT NULL columns here; as in
-- append_index_field, NULL means "unbounded" instead.
CREATE FUNCTION storage.insert_index_field(in_index_id int, in_ordinality int, in_expression varchar,
                                           in_valid_from timestamp, in_valid_until timestamp)
RETURNS storage.index_field LANGUAGE sql
BEGIN ATOMIC
    -- The shift is why the (index_id, ordinality) key is deferred.
    UPDATE storage.index_field
       SET ordinality = ordinality + 1
     WHERE index_id = in_index_id AND ordinality >= in_ordinality;
    INSERT INTO storage.index_field (index_id, ordinality, expression, valid_from, valid_until)
    VALUES (in_index_id, in_ordinality, in_expression,
            coalesce(in_valid_from, '-infinity'),
            coalesce(in_valid_until, 'infinity'))
    RETURNING *;
END;

COMMENT ON FUNCTION storage.insert_index_field(int, int, varchar, timestamp, timestamp) IS
$$Inserts a field or expression into index in_index_id at in_ordinality and
returns the row as saved; the following fields of that index move up by one.
See the security note on index_field.expression.$$;

CREATE FUNCTION storage.append_index_field(in_index_id int, in_expression varchar,
                                           in_valid_from timestamp, in_valid_until timestamp)
RETURNS storage.index_field LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.index_field (index_id, expression, ordinality, valid_from, valid_until)
    SELECT in_index_id, in_expression, coalesce(max(ordinality) + 1, 0),
           coalesce(in_valid_from, '-infinity'),
           coalesce(in_valid_until, 'infinity')
      FROM storage.index_field
     WHERE index_id = in_index_id
    RETURNING *;
END;

COMMENT ON FUNCTION storage.append_index_field(int, varchar, timestamp, timestamp) IS
$$Adds a field or expression after the last one of index in_index_id and
returns the row as saved. See the security note on index_field.expression.$$;

CREATE FUNCTION storage.expire_index_field(in_id int, in_valid_until timestamp)
RETURNS storage.index_field LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.index_field
       SET valid_until = in_valid_until
     WHERE id = in_id
    RETURNING *;
END;

COMMENT ON FUNCTION storage.expire_index_field(int, timestamp) IS
'Ends the index field''s validity at in_valid_until and returns its row (NULL when none has in_id).';

CREATE FUNCTION storage.expire_index(in_id int, in_valid_until timestamp)
RETURNS storage.index LANGUAGE sql
BEGIN ATOMIC
    UPDATE storage.index
       SET valid_until = in_valid_until
     WHERE id = in_id
    RETURNING *;
END;

COMMENT ON FUNCTION storage.expire_index(int, timestamp) IS
'Ends the index''s validity at in_valid_until and returns its row (NULL when no index has in_id).';

CREATE FUNCTION storage.get_index_fields(in_index_id int)
RETURNS SETOF storage.index_field LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.index_field WHERE index_id = in_index_id ORDER BY ordinality;
END;

COMMENT ON FUNCTION storage.get_index_fields(int) IS 'The fields of index in_index_id in order.';

CREATE FUNCTION storage.get_index(in_indexname text)
RETURNS storage.index LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.index WHERE indexname = in_indexname;
END;

COMMENT ON FUNCTION storage.get_index(text) IS 'The index named in_indexname, or NULL.';

-- Bagger's argument order (valid_until before valid_from) is kept: its
-- tools call this by these names. Unlike Bagger's, an update with NULL
-- in_valid_until means "no expiry" instead of failing on NOT NULL.
CREATE FUNCTION storage.save_index(in_indexname text, in_access_method text, in_tablespc text,
                                   in_valid_until timestamp, in_valid_from timestamp)
RETURNS storage.index LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.index (indexname, access_method, tablespc, valid_until, valid_from)
    VALUES (in_indexname, in_access_method, coalesce(in_tablespc, 'pg_default'),
            coalesce(in_valid_until, 'infinity'),
            coalesce(in_valid_from, '-infinity'))
    ON CONFLICT (indexname)
    DO UPDATE SET access_method = in_access_method,
                  valid_until = coalesce(in_valid_until, 'infinity')
    RETURNING *;
END;

COMMENT ON FUNCTION storage.save_index(text, text, text, timestamp, timestamp) IS
$$Creates the index named in_indexname, or updates its access method and
valid_until when it exists (tablespace and valid_from stay), and returns the
row as saved.$$;

---------------------------------------------------------------------------
-- Config
---------------------------------------------------------------------------

CREATE FUNCTION storage.get_config(in_key text)
RETURNS storage.config LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.config WHERE key = in_key;
END;

COMMENT ON FUNCTION storage.get_config(text) IS 'The setting named in_key, or NULL.';

CREATE FUNCTION storage.save_config(in_key text, in_value json)
RETURNS storage.config LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.config (key, value)
    VALUES (in_key, in_value)
    ON CONFLICT (key)
    DO UPDATE SET value = in_value
    RETURNING *;
END;

COMMENT ON FUNCTION storage.save_config(text, json) IS
'Creates or replaces the setting in_key and returns its row. Never store secrets here.';

---------------------------------------------------------------------------
-- Servermaps
---------------------------------------------------------------------------

CREATE FUNCTION storage.get_servermap(in_id int)
RETURNS storage.servermap LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.servermap WHERE id = in_id;
END;

COMMENT ON FUNCTION storage.get_servermap(int) IS 'Servermap generation in_id, or NULL.';

CREATE FUNCTION storage.most_recent_servermap()
RETURNS storage.servermap LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM storage.servermap ORDER BY id DESC LIMIT 1;
END;

COMMENT ON FUNCTION storage.most_recent_servermap() IS 'The servermap generation in force (the newest), or NULL.';

CREATE FUNCTION storage.save_servermap(in_server_map json)
RETURNS storage.servermap LANGUAGE sql
BEGIN ATOMIC
    INSERT INTO storage.servermap (server_map)
    VALUES (in_server_map)
    RETURNING *;
END;

COMMENT ON FUNCTION storage.save_servermap(json) IS
'Always inserts a new servermap generation (which is then in force) and returns it.';

CREATE FUNCTION storage.servermap_rotate_num()
RETURNS int LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT count(*) FROM storage.postgres_instance
     GROUP BY host ORDER BY 1 DESC LIMIT 1;
END;

COMMENT ON FUNCTION storage.servermap_rotate_num() IS
'The largest number of storage nodes on one host (NULL without nodes): how far a servermap rotates.';

RESET ROLE;
