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
