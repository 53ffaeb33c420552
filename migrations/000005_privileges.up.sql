-- Least privilege for the Lenkwerk roles (created in migration 2).
--
-- lenkwerk_config: calls the functions and writes the configuration tables,
-- nothing else. Not being the owner it cannot DROP, ALTER or TRUNCATE
-- anything. servermap is insert-only (generations are never changed), so
-- it gets no UPDATE or DELETE there.
--
-- lenkwerk_agent: SELECT on the published tables (for the initial copy)
-- and nothing else; its REPLICATION attribute lets it stream the slot.
--
-- Functions are executable by PUBLIC by default; only lenkwerk_config (and
-- the owner) may call these.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA storage FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA storage TO lenkwerk_config;

GRANT USAGE ON SCHEMA storage TO lenkwerk_config, lenkwerk_agent;

GRANT SELECT, INSERT, UPDATE, DELETE
   ON storage.postgres_instance, storage.dimension, storage.index,
      storage.index_field, storage.config
   TO lenkwerk_config;
GRANT SELECT, INSERT ON storage.servermap TO lenkwerk_config;
GRANT SELECT ON storage.time_bound TO lenkwerk_config;
-- serial columns: nextval for inserts.
GRANT USAGE ON ALL SEQUENCES IN SCHEMA storage TO lenkwerk_config;

GRANT SELECT
   ON storage.postgres_instance, storage.servermap, storage.dimension,
      storage.index, storage.index_field, storage.config
   TO lenkwerk_agent;
