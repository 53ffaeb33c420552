// Package follow is the storage-node side of Lenkwerk: it watches the
// key-value store the agent writes and keeps a local PostgreSQL copy of the
// Lenkwerk tables equal to it.
//
//	f, err := follow.New(follow.Config{DatabaseURL: local, Store: store})
//	err = f.Run(ctx) // until ctx is done; reconnects on every failure
//
// The local copy is provisioned by the Lenkwerk migrations as a copy
// (migrations.Options.Copy, which Config.Migrate runs): the same tables,
// but no publication, no slot and no wal_level requirement. Run refuses a
// database that is not a copy, so it can never write into the Lenkwerk
// database of record.
//
// # Keys and rows
//
// Keys are routed to tables by the agent's key templates (package
// agent/keymap, with the same Prefix and Templates the agent runs with).
// Keys under <prefix>/.lenkwerk/ are the agent's and are ignored; a key
// matching no template is logged once and skipped. A put upserts the row
// json_populate_record(NULL::<table>, value) gives, identified by the
// template's key columns (UPDATE of the row with those values, else
// INSERT); a delete deletes the row whose key columns equal the key's
// segments (read back the same way, so "5432" becomes an int). A JSON null
// in a NOT NULL json or jsonb column (servermap.server_map, config.value)
// is kept as the JSON null the source holds, where json_populate_record
// alone would make it SQL NULL; elsewhere null is SQL NULL. A put whose
// value is not a JSON object, or whose key columns do not give back its
// key, is logged and skipped. A table whose template has no column
// (/Servermap) holds exactly the one row of its key, the newest generation,
// as the store does: a put replaces the table's rows, a delete empties it.
//
// # Ordering and atomicity
//
// Every watch response is applied in one local transaction together with
// the store revision it brings the copy to, in lenkwerk.follow_state, so a
// crash resumes exactly after the last committed response. Within it, each
// store revision (one Lenkwerk transaction) is applied with its deletes
// first, children before parents (foreign keys, read from the catalog),
// then its puts, parents before children: the foreign key index_field →
// index is not deferrable, but deferrable constraints (dimension
// ordinality, index_field's key) are deferred until the revision's end,
// where they are checked inside its savepoint. If that order still
// violates a constraint (e.g. two rows swapping a unique value), the
// revision is applied again with every touched row deleted first; if that
// fails too, op by op, logging and skipping the puts and deletes PostgreSQL
// refuses as invalid data (SQLSTATE classes 22 and 23), which keep their
// previous local row. Changes a foreign key refuses (23503) are not
// skipped but wait: an agent transaction larger than a store batch arrives
// in several revisions, so a field may come before its index, or an
// index's deletion before its fields'. They are retried after every
// revision, dropped when their key changes again, and the checkpoint stays
// before the oldest of them, so a restart replays them (replaying applied
// revisions writes the same final values). If the ops together still
// break a deferred constraint, they are applied op by op checking the
// deferred constraints after each. Any other error ends the session:
// nothing of the response is committed and it is applied again after
// reconnecting.
//
// # Start, compaction, reconcile
//
// Without a checkpoint (or one of another store, or ahead of the store's
// revision: a store restored or replaced), and when the watch reports
// ErrCompacted, the follower lists the prefix and reconciles in one
// transaction: upsert every listed row that differs locally, delete every
// local row of a template's table whose key is not listed, record the
// list's revision; then it watches from that revision. A listed key whose
// value cannot be applied keeps its local row, as with the watch.
//
// # SQL safety
//
// No SQL is built from store content. Table names come from the templates'
// configuration and are resolved with to_regclass on the quoted name
// (pgx.Identifier), must be ordinary tables outside the system schemas and
// the lenkwerk schema; statements name the table and its columns as the
// catalog spells them, quoted. Keys and values reach PostgreSQL only as
// parameters (the value through json_populate_record, which ignores fields
// that are not columns).
package follow
