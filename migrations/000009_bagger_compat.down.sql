-- Back to migration 4's set_pg_instance_status; a copy's
-- inbound_from_kvstore goes.
DROP FUNCTION IF EXISTS storage.inbound_from_kvstore(regclass, json);

SET LOCAL ROLE lenkwerk_admin;

CREATE OR REPLACE FUNCTION storage.set_pg_instance_status(in_id int, in_status int)
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

RESET ROLE;
