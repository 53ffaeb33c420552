-- What Bagger's own tools see differently from its extension
-- bagger_lw_storage, aligned (the README's "Coming from Bagger's extension"
-- lists what stays different on purpose).
SET LOCAL ROLE lenkwerk_admin;

-- set_pg_instance_status as Bagger's: an unknown id gives NULL (Bagger's
-- SQL function returns no row, which is NULL, where a PL/pgSQL row
-- variable would be a row of NULLs) whatever the status, and a NULL status
-- of a node fails with SQLSTATE 23502 (not_null_violation), as Bagger's
-- UPDATE does, an invalid one with 23514 (check_violation), as the CHECK
-- would; the messages name the valid values.
CREATE OR REPLACE FUNCTION storage.set_pg_instance_status(in_id int, in_status int)
RETURNS storage.postgres_instance LANGUAGE plpgsql
AS $$
DECLARE
    result storage.postgres_instance;
BEGIN
    PERFORM FROM storage.postgres_instance WHERE id = in_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF in_status IS NULL THEN
        RAISE EXCEPTION 'postgres_instance status cannot be NULL: use 0 (offline), 1 (read-only), 2 (write-only) or 3 (online)'
            USING ERRCODE = 'not_null_violation', SCHEMA = 'storage', TABLE = 'postgres_instance', COLUMN = 'status',
                  HINT = 'status is a bit field: bit 0 can read, bit 1 can write.';
    END IF;
    IF in_status NOT BETWEEN 0 AND 3 THEN
        RAISE EXCEPTION 'invalid postgres_instance status %: must be 0 (offline), 1 (read-only), 2 (write-only) or 3 (online)', in_status
            USING ERRCODE = 'check_violation', SCHEMA = 'storage', TABLE = 'postgres_instance',
                  CONSTRAINT = 'postgres_instance_status_check',
                  HINT = 'status is a bit field: bit 0 can read, bit 1 can write.';
    END IF;
    UPDATE storage.postgres_instance
       SET status = in_status
     WHERE id = in_id
    RETURNING * INTO result;
    IF NOT FOUND THEN
        RETURN NULL; -- deleted meanwhile
    END IF;
    RETURN result;
END
$$;

COMMENT ON FUNCTION storage.set_pg_instance_status(int, int) IS
$$Sets the status of a storage node and returns its row as stored, or NULL
when no node has in_id. Status: 0 offline, 1 read-only, 2 write-only, 3
online; NULL fails with SQLSTATE 23502, other values with 23514.$$;

-- Bagger's storage agents load every value they watch into their local
-- copy with storage.inbound_from_kvstore(regclass, json); a local copy
-- (lenkwerk follow, lenkwerk migrate --copy) has it, with the names and
-- arguments of Bagger's. The database of record has no use for it.
--
-- A value is a row as the agent writes it (to_jsonb). Its id identifies
-- the row, as in Bagger's function: the row with that id is updated, or
-- the row is inserted; rows holding one of its other unique values (its
-- primary key, say) under another id are deleted first, so that a row
-- whose key changed (a delete and a put in the store, and Bagger's agent
-- applies no delete) or values shifted over several rows (dimension
-- ordinality) end as the store has them once every value arrived. The
-- servermap holds only the generation the store has, as in lenkwerk
-- follow's copy. SECURITY DEFINER, since lenkwerk_config may not delete
-- servermap generations; only the six Lenkwerk tables are written, with
-- the catalog's names, and the value reaches SQL only as a parameter.
DO $do$
BEGIN
    IF NOT EXISTS (SELECT FROM lenkwerk.setting WHERE name = 'role' AND value = 'copy') THEN
        RETURN;
    END IF;
    CREATE FUNCTION storage.inbound_from_kvstore(in_relname regclass, in_value json)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $fn$
    DECLARE
        cols   text;
        others text;
        n      bigint;
    BEGIN
        IF in_relname IS NULL OR in_relname NOT IN ('storage.postgres_instance'::regclass, 'storage.servermap'::regclass,
                'storage.dimension'::regclass, 'storage.index'::regclass, 'storage.index_field'::regclass,
                'storage.config'::regclass) THEN
            RAISE EXCEPTION 'inbound_from_kvstore: % is not a Lenkwerk table', coalesce(in_relname::text, 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'One of storage.postgres_instance, servermap, dimension, index, index_field, config.';
        END IF;
        IF in_value IS NULL OR json_typeof(in_value) <> 'object' THEN
            RAISE EXCEPTION 'inbound_from_kvstore: the value for % is %, not a row (a JSON object)',
                    in_relname, coalesce(json_typeof(in_value), 'missing')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'A key deleted in the store has no value: deletes cannot be applied here; lenkwerk follow applies them.';
        END IF;
        IF in_value->>'id' IS NULL THEN
            RAISE EXCEPTION 'inbound_from_kvstore: the value for % has no id', in_relname
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO cols
          FROM pg_attribute WHERE attrelid = in_relname AND attnum > 0 AND NOT attisdropped;
        IF in_relname = 'storage.servermap'::regclass THEN
            DELETE FROM ONLY storage.servermap;
            EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM json_populate_record(NULL::%s, $1)',
                           in_relname, cols, cols, in_relname) USING in_value;
            RETURN;
        END IF;
        -- (t.a, t.b) = (v.a, v.b) for every unique key but id.
        SELECT string_agg(format('(%s) = (%s)', tk, vk), ' OR ') INTO others
          FROM (SELECT string_agg('t.' || quote_ident(a.attname), ', ' ORDER BY k.ord) AS tk,
                       string_agg('v.' || quote_ident(a.attname), ', ' ORDER BY k.ord) AS vk,
                       array_agg(a.attname::text) AS names
                  FROM pg_index x
                  CROSS JOIN unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
                 WHERE x.indrelid = in_relname AND x.indisunique
                   AND x.indexprs IS NULL AND x.indpred IS NULL
                 GROUP BY x.indexrelid) AS u
         WHERE names <> ARRAY['id'];
        IF others IS NOT NULL THEN
            EXECUTE format('DELETE FROM ONLY %s AS t USING json_populate_record(NULL::%s, $1) AS v '
                           'WHERE t.id IS DISTINCT FROM v.id AND (%s)', in_relname, in_relname, others) USING in_value;
        END IF;
        EXECUTE format('UPDATE ONLY %s AS t SET (%s) = (SELECT %s FROM json_populate_record(NULL::%s, $1)) '
                       'WHERE t.id = (SELECT id FROM json_populate_record(NULL::%s, $1))',
                       in_relname, cols, cols, in_relname, in_relname) USING in_value;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n = 0 THEN
            EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM json_populate_record(NULL::%s, $1)',
                           in_relname, cols, cols, in_relname) USING in_value;
        END IF;
    END
    $fn$;
    COMMENT ON FUNCTION storage.inbound_from_kvstore(regclass, json) IS
    $c$Bagger's storage agents' way to load a value from the key-value store into
this local copy: in_value is the row (JSON) of in_relname, one of the six
Lenkwerk tables. Updates the row with its id, or inserts it; rows holding
its other unique values under another id are deleted first; storage.servermap
keeps only the generation given. Deletes in the store cannot be applied this
way: lenkwerk follow is the supported storage-node side.$c$;
    REVOKE ALL ON FUNCTION storage.inbound_from_kvstore(regclass, json) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION storage.inbound_from_kvstore(regclass, json) TO lenkwerk_config;
END
$do$;

RESET ROLE;
