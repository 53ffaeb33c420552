-- Drops the slot recorded by migration 6. Refuses while a consumer (the
-- agent) streams it, rather than breaking the running agent.
DO $$
DECLARE
    slot  text := (SELECT value FROM lenkwerk.setting WHERE name = 'slot_name');
    asked text := nullif(current_setting('lenkwerk.slot_name', true), '');
    pid   int;
BEGIN
    IF asked IS DISTINCT FROM NULL AND asked IS DISTINCT FROM slot THEN
        RAISE EXCEPTION 'this database''s slot is "%", but lenkwerk.slot_name asks for "%"', slot, asked
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Run the migration without --slot (or with the recorded name); nothing of this migration was applied.';
    END IF;
    SELECT active_pid INTO pid FROM pg_catalog.pg_replication_slots
     WHERE slot_name = slot AND database = current_database();
    IF FOUND AND pid IS NOT NULL THEN
        RAISE EXCEPTION 'replication slot "%" is in use by process %', slot, pid
            USING ERRCODE = 'object_in_use',
                  DETAIL = 'Stop the Lenkwerk agent, then migrate down again; nothing of this migration was applied.';
    END IF;
END
$$;

-- Like the creation, at top level. No row when it was dropped by hand.
SELECT pg_catalog.pg_drop_replication_slot(slot_name)
  FROM pg_catalog.pg_replication_slots
 WHERE slot_name = (SELECT value FROM lenkwerk.setting WHERE name = 'slot_name')
   AND database = current_database();
