-- Drops the Lenkwerk tables and ALL THE BAGGER CLUSTER STATE IN THEM.
-- No CASCADE: if something else was put in schema storage, this fails rather
-- than dropping it.
DROP TABLE storage.index_field;
DROP TABLE storage.index;
DROP TABLE storage.dimension;
DROP TABLE storage.config;
DROP TABLE storage.servermap;
DROP TABLE storage.postgres_instance;
DROP FUNCTION storage.validrange(storage.time_bound);
DROP TABLE storage.time_bound;
DROP SCHEMA storage;
