-- The Lenkwerk schema: Bagger's cluster state, table for table as Bagger's
-- own storage schema (bagger_lw_storage) defines it. Bagger's storage nodes
-- load the rows the agent mirrors with json_populate_record(NULL::<table>,
-- value), so names and types must stay exactly Bagger's.
--
-- Everything is created as lenkwerk_admin, which therefore owns it; the
-- lenkwerk_config and lenkwerk_agent roles get only what migration 5 grants.
CREATE SCHEMA storage AUTHORIZATION lenkwerk_admin;
SET LOCAL ROLE lenkwerk_admin;

COMMENT ON SCHEMA storage IS
$$Lenkwerk: the state of a Bagger cluster (storage nodes, servermap generations,
dimensions, indexes, configuration). Change it through the storage.* functions
as lenkwerk_config; the Lenkwerk agent mirrors every published row into the
key-value store the storage nodes watch.$$;

-- REPLICA IDENTITY FULL on every published table. A delete event carries
-- only the replica identity, and with the default (the primary key) deletes
-- of dimension (fieldname), index (indexname) and index_field (index_id,
-- ordinality) would lack the id their keys (/Dimension/<id>, /Index/<id>,
-- /Index/<index_id>/<id>) are built from; index_field's key is even
-- DEFERRABLE, which cannot be a replica identity at all, so with the default
-- every DELETE or UPDATE on it would fail once published. FULL also makes
-- updates carry the old row with TOASTed values inlined, so an update that
-- leaves a large json value (server_map, config.value) unchanged, which
-- pgoutput sends as "unchanged TOAST", can still be written as a complete
-- flat row; a key-changing update carries the old key to delete. The cost (the old row
-- in WAL on update/delete) is nothing for tables this small and rarely
-- written. json has no equality operator, which only matters to a
-- PostgreSQL subscriber applying FULL-identity changes; the consumer here
-- is the Lenkwerk agent.

CREATE TABLE storage.time_bound (
    valid_from  timestamp NOT NULL DEFAULT '-infinity',
    valid_until timestamp NOT NULL DEFAULT 'infinity',
    CHECK (valid_from IS NULL) NO INHERIT -- no rows here: an interface only
);

COMMENT ON TABLE storage.time_bound IS
$$Interface table: dimension, index and index_field inherit it, which gives
entities valid only for a time range one consistent shape. It holds no rows of
its own (its CHECK refuses them) and is not published.$$;
COMMENT ON COLUMN storage.time_bound.valid_from IS 'First moment the entity is in force (inclusive); -infinity: always has been.';
COMMENT ON COLUMN storage.time_bound.valid_until IS 'Moment the entity stops being in force (exclusive); infinity: no expiry. Set by the expire_* functions.';

CREATE FUNCTION storage.validrange(storage.time_bound)
RETURNS tsrange LANGUAGE sql IMMUTABLE
RETURN tsrange($1.valid_from, $1.valid_until, '[)');

COMMENT ON FUNCTION storage.validrange(storage.time_bound) IS
'The [valid_from, valid_until) range a time-bound row is in force.';

CREATE TABLE storage.postgres_instance (
    id       serial NOT NULL UNIQUE,
    host     varchar,
    port     int,
    username varchar NOT NULL,
    status   smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (host, port),
    CHECK (status >= 0 AND status <= 3) -- keep in step with the status comment
);
ALTER TABLE storage.postgres_instance REPLICA IDENTITY FULL;

COMMENT ON TABLE storage.postgres_instance IS
$$The PostgreSQL instances that are Bagger storage nodes: enough for Bagger
components to connect to them. Authentication is NOT in scope and is set up
separately: certificate or GSSAPI authentication is recommended, .pgpass a
fallback (rotating passwords there is not easy).

NEVER STORE PASSWORDS HERE (or anywhere in this schema): every row is
replicated in plain text to the key-value store and every storage node.$$;
COMMENT ON COLUMN storage.postgres_instance.id IS 'Stable number of the node; the agent keys it by host and port (/PostgresInstance/<host>/<port>).';
COMMENT ON COLUMN storage.postgres_instance.host IS 'Host name or IP address the node listens on.';
COMMENT ON COLUMN storage.postgres_instance.port IS 'TCP port the node listens on.';
COMMENT ON COLUMN storage.postgres_instance.username IS 'Role Bagger components (Schaufel) connect as. A user name only: never a password.';
COMMENT ON COLUMN storage.postgres_instance.status IS
$$A bit field of what the node may do:
  bit 0 - can read
  bit 1 - can write
giving the values
  0 - offline (the state a node is registered in)
  1 - read-only
  2 - write-only
  3 - online (can read and write)
Other values are refused; new states may be added later.$$;

CREATE TABLE storage.servermap (
    id         serial PRIMARY KEY,
    server_map json NOT NULL
);
ALTER TABLE storage.servermap REPLICA IDENTITY FULL;

COMMENT ON TABLE storage.servermap IS
$$Server maps by generation: which storage nodes receive writes together.
Insert-only: save_servermap always adds a generation, and the one with the
highest id (most_recent_servermap) is in force.$$;
COMMENT ON COLUMN storage.servermap.id IS 'Generation number; the highest is in force.';
COMMENT ON COLUMN storage.servermap.server_map IS 'The map itself (JSON, as Bagger''s servermap tools write it).';

CREATE TABLE storage.dimension (
    id          serial NOT NULL UNIQUE,
    ordinality  int NOT NULL UNIQUE DEFERRABLE INITIALLY DEFERRED,
    default_val varchar NULL DEFAULT 'notexist',
    fieldname   varchar PRIMARY KEY
) INHERITS (storage.time_bound);
ALTER TABLE storage.dimension REPLICA IDENTITY FULL;

COMMENT ON TABLE storage.dimension IS
$$The dimensions by which data is partitioned, evaluated in order of
ordinality. Default values can be set in default_val, though Bagger does not
use them yet.$$;
COMMENT ON COLUMN storage.dimension.ordinality IS
'Order of evaluation (0 first). Unique, checked at commit so insert_dimension can shift the following dimensions.';
COMMENT ON COLUMN storage.dimension.default_val IS 'Value used when a record lacks the field.';
COMMENT ON COLUMN storage.dimension.fieldname IS 'The field of a record partitioned by.';

CREATE TABLE storage.index (
    id            serial NOT NULL UNIQUE,
    indexname     varchar(16) DEFAULT 'bagger_idx',
    access_method varchar NOT NULL, -- extensible, enforced in tooling
    tablespc      varchar NOT NULL DEFAULT 'pg_default',
    PRIMARY KEY (indexname)
) INHERITS (storage.time_bound);
ALTER TABLE storage.index REPLICA IDENTITY FULL;

COMMENT ON TABLE storage.index IS
$$Index definitions the storage nodes create on their data (GIN, GiST, btree,
hash...). The fields or expressions are in index_field. Registering indexes is
a privileged operation: see the note on index_field.expression.$$;
COMMENT ON COLUMN storage.index.indexname IS 'Name of the index on the storage nodes (at most 16 characters).';
COMMENT ON COLUMN storage.index.access_method IS 'Index access method (btree, gin, gist, hash...); checked by the tooling.';
COMMENT ON COLUMN storage.index.tablespc IS 'Tablespace the storage nodes put the index in.';

CREATE TABLE storage.index_field (
    id         serial NOT NULL UNIQUE,
    index_id   int NOT NULL REFERENCES storage.index (id),
    ordinality int,
    expression varchar NOT NULL,
    PRIMARY KEY (index_id, ordinality) DEFERRABLE INITIALLY DEFERRED
) INHERITS (storage.time_bound);
ALTER TABLE storage.index_field REPLICA IDENTITY FULL;

COMMENT ON TABLE storage.index_field IS
$$The fields or expressions of each index, in order of ordinality.

Take care what goes in here: while naive SQL injection is not possible when
the index is created, an index runs its expressions on every insert and
update. Registering indexes is therefore a privileged operation.$$;
COMMENT ON COLUMN storage.index_field.ordinality IS
'Position in the index (0 first). Unique per index, checked at commit so insert_index_field can shift the following fields.';
COMMENT ON COLUMN storage.index_field.expression IS
$$SECURITY: improper management of index expressions lets an attacker run
arbitrary code whenever the index is updated. CREATE INDEX itself is not open
to SQL injection, but an expression can call any function marked IMMUTABLE, so
a clever attacker can create a destructive function, mark it immutable and
call it from an index expression.

The risk comes from the expressions, not from storing them in a database:
wherever they are kept, changes to them need careful control.

RECOMMENDATION: change this table only from an infrastructure-as-code
framework, and check that the two stay in sync.$$;

CREATE TABLE storage.config (
    id    serial NOT NULL UNIQUE,
    key   text PRIMARY KEY,
    value json NOT NULL
);
ALTER TABLE storage.config REPLICA IDENTITY FULL;

COMMENT ON TABLE storage.config IS
$$Configuration of the storage nodes, one JSON value per key (e.g. kvstore_type
"etcd" and kvstore_config {"host": ..., "port": ...}, which the agents read).
Never store passwords or other secrets here: every row is replicated in plain
text to the key-value store and every storage node.$$;
COMMENT ON COLUMN storage.config.key IS 'Name of the setting (/Config/<key> in the key-value store).';
COMMENT ON COLUMN storage.config.value IS
'JSON: richer than plain text, and serialization libraries exist in every major language.';

RESET ROLE;
