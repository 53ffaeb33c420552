-- Drops the publication recorded by the up migration (whatever name it was
-- given), then Lenkwerk's bookkeeping.
DO $$
DECLARE
    pub   text := (SELECT value FROM lenkwerk.setting WHERE name = 'publication_name');
    asked text := nullif(current_setting('lenkwerk.publication_name', true), '');
BEGIN
    IF asked IS DISTINCT FROM NULL AND asked IS DISTINCT FROM pub THEN
        RAISE EXCEPTION 'this database''s publication is "%", but lenkwerk.publication_name asks for "%"', pub, asked
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'Run the migration without --publication (or with the recorded name); nothing of this migration was applied.';
    END IF;
    IF pub IS NOT NULL THEN
        EXECUTE format('DROP PUBLICATION IF EXISTS %I', pub);
    END IF;
END
$$;
DROP TABLE IF EXISTS lenkwerk.follow_state; -- a copy's (lenkwerk follow)
DROP TABLE lenkwerk.setting;
DROP SCHEMA lenkwerk;
