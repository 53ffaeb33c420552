-- Configuring a Bagger cluster through the Lenkwerk functions.
--
-- Run as a member of lenkwerk_config (a superuser grants it once:
--   GRANT lenkwerk_config TO alice;)
--   psql "$LENKWERK_DATABASE_URL" -v ON_ERROR_STOP=1 -f sql/configure-examples.sql
-- Host names, ports and values below are examples: adapt them. Every change
-- is mirrored by the Lenkwerk agent into the key-value store the storage
-- nodes watch, once the transaction commits.
BEGIN;
-- Act with the configuration tools' rights only, even as a superuser.
SET LOCAL ROLE lenkwerk_config;

-- Register the storage nodes. A node is registered offline (status 0).
-- username is the role Bagger connects as: NEVER put a password here, the
-- rows are replicated in plain text to every storage node.
SELECT * FROM storage.register_pg_instance('pg1.example.net', 5432, 'bagger');
SELECT * FROM storage.register_pg_instance('pg2.example.net', 5432, 'bagger');

-- Bring a node online. status is a bit field: bit 0 can read, bit 1 can
-- write: 0 offline, 1 read-only, 2 write-only, 3 online. Other values fail.
SELECT * FROM storage.set_pg_instance_status(
    (storage.get_pg_instance_by_host_and_port('pg1.example.net', 5432)).id, 3);
SELECT * FROM storage.set_pg_instance_status(
    (storage.get_pg_instance_by_host_and_port('pg2.example.net', 5432)).id, 1);

-- Where Bagger's agents find the key-value store (storage.config rows).
SELECT * FROM storage.save_config('kvstore_type', '"etcd"');
SELECT * FROM storage.save_config('kvstore_config', '{"host": "etcd.example.net", "port": 2379}');

-- Partitioning dimensions, evaluated in order; insert_dimension shifts the
-- dimensions at and after the given position.
SELECT * FROM storage.append_dimension('host', NULL, NULL, NULL);
SELECT * FROM storage.append_dimension('app', 'unknown', NULL, NULL);
SELECT * FROM storage.insert_dimension(0, 'tenant', NULL, NULL, NULL);

-- An index and its fields. Index expressions run on every insert on the
-- storage nodes: keep them under change control (see the comment on
-- storage.index_field.expression).
SELECT * FROM storage.save_index('bagger_idx', 'btree', NULL, NULL, NULL);
SELECT * FROM storage.append_index_field((storage.get_index('bagger_idx')).id, 'host', NULL, NULL);
SELECT * FROM storage.append_index_field((storage.get_index('bagger_idx')).id, 'app', NULL, NULL);

-- A new servermap generation (always inserted; the newest is in force), in
-- the shape Bagger's Servermap generates: per node, where its data is copied.
SELECT * FROM storage.save_servermap($${
  "version": 1,
  "pg1.example.net_5432": {
    "schaufel": {"host": "pg1.example.net", "port": 5432},
    "copies": [{"host": "pg1.example.net", "port": 5432}, {"host": "pg2.example.net", "port": 5432}]
  },
  "pg2.example.net_5432": {
    "schaufel": {"host": "pg2.example.net", "port": 5432},
    "copies": [{"host": "pg2.example.net", "port": 5432}, {"host": "pg1.example.net", "port": 5432}]
  }
}$$);

-- Look at the result.
SELECT * FROM storage.list_pg_instances() ORDER BY id;
SELECT * FROM storage.get_dimensions();
SELECT * FROM storage.get_index_fields((storage.get_index('bagger_idx')).id);
SELECT id FROM storage.most_recent_servermap();

COMMIT;

-- Take a node out of service (it stays registered):
--   SELECT * FROM storage.set_pg_instance_status(<id>, 0);
-- Retire a dimension or index from a moment on (rows are kept, expired):
--   SELECT * FROM storage.expire_dimension(<id>, now()::timestamp);
--   SELECT * FROM storage.expire_index(<id>, now()::timestamp);
-- The agent logs in as lenkwerk_agent; give it certificate or GSSAPI
-- authentication in pg_hba.conf, or a password (as a superuser, never in
-- these tables):
--   ALTER ROLE lenkwerk_agent PASSWORD '...';
