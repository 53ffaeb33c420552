package pgkv

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// queries holds the driver's SQL with the schema's quoted name filled in.
type queries struct {
	get, list, applyOne, sync, flushed, head, watch, compactTarget, compactMark, compactDelete string
}

// walPos is what every read adds to its statement (see durable.go): the
// WAL insert position, read after the statement's snapshot was taken, so
// at or past the commit record of every transaction the snapshot sees, and
// whether the WAL is flushed that far. On a hot standby (in recovery) both
// are NULL: what a standby has replayed is already flushed on the primary.
// OFFSET 0 keeps the position from being read more than once.
const walPos = `wal AS MATERIALIZED (
		SELECT p.lsn::text AS lsn, CASE WHEN p.lsn IS NULL THEN true ELSE pg_current_wal_flush_lsn() >= p.lsn END AS flushed
		FROM (SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_insert_lsn() END AS lsn OFFSET 0) p)`

func newQueries(schema string) queries {
	s := pgx.Identifier{schema}.Sanitize()
	r := strings.NewReplacer("$schema", s)
	return queries{
		// Every read returns the store revision and walPos's columns, so
		// the driver returns nothing that is not yet durable.
		get: r.Replace(`WITH ` + walPos + `
			SELECT m.rev, wal.lsn, wal.flushed, k.value, k.mod_rev
			FROM wal CROSS JOIN $schema.kv_meta m
			LEFT JOIN $schema.kv k ON k.key = $1`),

		// One statement, one snapshot: the revision and the rows agree.
		list: r.Replace(`WITH ` + walPos + `
			SELECT m.rev, wal.lsn, wal.flushed, k.key, k.value, k.mod_rev
			FROM wal CROSS JOIN $schema.kv_meta m
			LEFT JOIN $schema.kv k ON k.key = $1 OR (k.key >= $2 AND k.key < $3)
			ORDER BY k.key`),

		// kv_apply commits without waiting for its WAL flush when other
		// writers wait for it; kv_sync, in a transaction of its own after
		// it, then makes it durable and notifies. applyOne also returns
		// whether the write needs kv_sync: kv_apply sets
		// lenkwerk_pgkv.pending, read after it (OFFSET 0) in the same
		// statement, so on the same server connection whatever pools
		// connections.
		applyOne: r.Replace(`SELECT a.rev, current_setting('lenkwerk_pgkv.pending', true)
			FROM (SELECT $schema.kv_apply($1::text[], $2::bytea[], $3::text, $4::text[], $5::bigint[]) AS rev OFFSET 0) a`),
		sync: r.Replace(`SELECT $schema.kv_sync($1::text)`),

		// Whether the WAL is flushed up to a position walPos returned.
		flushed: `SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn`,

		head: r.Replace(`WITH ` + walPos + `
			SELECT m.rev, m.compact_rev, wal.lsn, wal.flushed FROM wal CROSS JOIN $schema.kv_meta m`),

		// One snapshot gives the head, the compaction point and the
		// prefix's events after $1 up to the head (and up to $6 unless
		// NULL), in revision order (at most $2 events; NULL: all). The
		// head is a safe horizon: writers are serialized, so every
		// revision up to it is committed and visible in this snapshot
		// (and durable once the WAL is flushed up to walPos). If the
		// compaction point is past $1 no rows are read: the watch has
		// lost history.
		//
		// A prefix with little history is read through kv_log_key_rev
		// (migration 3): only its own rows, however many revisions other
		// keys took meanwhile. For a prefix that covers most of the log
		// the planner walks the primary key and stops at the limit. The
		// choice depends on the prefix, so the watcher runs this with a
		// plan made for its parameters (never a cached generic plan).
		watch: r.Replace(`WITH ` + walPos + `
			SELECT m.rev, m.compact_rev, wal.lsn, wal.flushed, l.rev, l.key, l.value
			FROM wal CROSS JOIN $schema.kv_meta m
			LEFT JOIN LATERAL (
				SELECT rev, idx, key, value FROM $schema.kv_log
				WHERE rev > $1 AND rev <= m.rev AND ($6::bigint IS NULL OR rev <= $6)
				  AND (key = $3 OR (key >= $4 AND key < $5))
				ORDER BY rev, idx
				LIMIT $2
			) l ON m.compact_rev <= $1
			ORDER BY l.rev, l.idx`),

		// The newest revision to discard: beyond the count bound ($1 > 0)
		// or older than the age bound ($2 > 0).
		compactTarget: r.Replace(`SELECT m.rev, m.compact_rev, greatest(
				CASE WHEN $1::bigint > 0 THEN m.rev - $1::bigint ELSE 0 END,
				CASE WHEN $2::interval > interval '0' THEN
					coalesce((SELECT max(rev) FROM $schema.kv_log WHERE at < now() - $2::interval), 0)
				ELSE 0 END)
			FROM $schema.kv_meta m`),

		// The marker moves first, in its own transaction; the log rows go
		// after it commits. A watch reads marker and log in one snapshot,
		// so it sees either the old marker with all rows or the new marker:
		// never a silent gap.
		compactMark: r.Replace(`UPDATE $schema.kv_meta SET compact_rev = $1
			WHERE compact_rev < $1 AND $1 <= rev RETURNING compact_rev`),
		compactDelete: r.Replace(`DELETE FROM $schema.kv_log WHERE rev <= $1`),
	}
}
