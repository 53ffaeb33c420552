// Package migrations provisions the Lenkwerk database: the Bagger cluster
// state in schema storage, the configuration-tool functions, the roles
// lenkwerk_admin, lenkwerk_config and lenkwerk_agent, the publication and
// the logical replication slot the agent streams.
//
// The schema lives in this directory as golang-migrate files
// (NNNNNN_name.up.sql / .down.sql), embedded into the binary and run by
// Up, Down, Goto and Force through golang-migrate's pgx/v5 driver. The
// stock CLI runs the same folder unchanged:
//
//	migrate -path migrations -database 'pgx5://postgres@host/lenkwerk' up
//
// # Names
//
// The publication (default bagger_lw_storage) and slot (default lw_agent)
// are named by the custom settings lenkwerk.publication_name and
// lenkwerk.slot_name, read by the SQL itself since golang-migrate has no
// templating. Options.Publication and Options.Slot set them as runtime
// parameters of the migration connection; stock CLI users add them to the
// URL (?lenkwerk.slot_name=s) or set them with ALTER DATABASE ... SET. The
// names are recorded in table lenkwerk.setting when the publication is
// created, and the slot and the down migrations use the recorded names, so
// a later run without options still finds what was created.
//
// # Local copies
//
// Options.Copy provisions a local copy, as `lenkwerk follow` keeps on
// Bagger's storage nodes (ordinary servers): the same schema, functions and
// roles, but no publication and no slot, so wal_level does not matter; it
// has lenkwerk.follow_state, where the follower records the store revision
// it applied. The custom setting lenkwerk.role = 'copy' (RoleSetting) tells
// migrations 1 and 6 (stock CLI: ?lenkwerk.role=copy in the URL); migration
// 6 records role = copy in lenkwerk.setting and migration 7 reads it from
// there. The runner refuses to migrate a source as a copy or a copy as a
// source.
//
// # Adopting Bagger's own extension
//
// Bagger ships the same tables as an extension, bagger_lw_storage 0.0.1,
// whose script also creates the publication; Bagger's agent streams a
// test_decoding slot named lw_agent. Up refuses such a database (and
// migration 1 refuses it for the stock CLI, writing nothing); Adopt takes
// it over, keeping every row:
//
//  1. Before golang-migrate creates even its version table, the extension's
//     objects are described from the catalog (adopt/describe.sql: schema,
//     tables, columns with types, NOT NULL and defaults, constraints,
//     inheritance, other indexes, triggers, rules, policies, sequences,
//     function signatures, and whatever else is in its schema) and compared
//     with adopt/bagger_lw_storage--0.0.1.facts; any difference is refused,
//     every differing fact named. So are a publication bagger_lw_storage
//     with other tables and, unless Options.Copy, a slot of the name Lenkwerk
//     will use that is not Bagger's agent's or that a consumer streams.
//  2. One transaction, holding golang-migrate's lock: the check again with
//     the tables locked, their rows and sequence positions kept aside, DROP
//     EXTENSION and Bagger's publication, then the up migrations before the
//     slot's (1 to 6), run from the embedded files exactly as `up` runs them,
//     the rows and sequence positions put back, the adoption recorded
//     (lenkwerk.setting adopted_from) and version 6 written into
//     golang-migrate's table. Anything failing rolls it all back.
//  3. The normal runner migrates up from there. Just before migration 7, an
//     adopted database's test_decoding slot of the recorded name is dropped
//     (refused while a consumer streams it), so migration 7 creates the
//     pgoutput slot in its place: slot creation cannot share a transaction
//     with writes. A run that failed here is finished by Adopt or Up.
//
// Running migrations 1 to 6 themselves over the kept rows, rather than
// altering the adopted objects into shape, makes the result the same as a
// new database's whatever later migrations add, and these run on it as on
// any Lenkwerk database, as does Down. Migration 9 aligns what Bagger's
// tools see differently (set_pg_instance_status) and gives local copies
// Bagger's storage agents' storage.inbound_from_kvstore.
//
// # Requirements and failures
//
// The server needs wal_level=logical; Up and Goto check it before touching
// the database, and migration 1 checks it again for the stock CLI. Run the
// migrations as a superuser: creating a REPLICATION role needs one. Each
// migration file is one transaction, so a failed migration changes nothing
// but marks the version dirty; errors say which `lenkwerk migrate force V`
// clears that once the cause is fixed.
//
// Migrations run one at a time; a cancelled context stops the run between
// two of them, or cancels the statement of the one running (which then
// rolls back and leaves the version dirty, as the error says).
//
// Roles and slot names are cluster-wide: up tolerates existing roles, but
// two databases of one server need different slot names. Down leaves the
// roles (drop them by hand once no database uses them), and golang-migrate's
// own version table (public.schema_migrations) stays after down to 0.
// golang-migrate's x-multi-statement option must stay off: it splits files
// at every ";", which breaks the DO blocks and function bodies.
package migrations
