package pgkv

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// queries holds the driver's SQL with the schema's quoted name filled in.
type queries struct {
	get, list, apply, head, watch, compactTarget, compactMark, compactDelete string
}

func newQueries(schema string) queries {
	s := pgx.Identifier{schema}.Sanitize()
	r := strings.NewReplacer("$schema", s)
	return queries{
		get: r.Replace(`SELECT value, mod_rev FROM $schema.kv WHERE key = $1`),

		// One statement, one snapshot: the revision and the rows agree.
		list: r.Replace(`SELECT m.rev, k.key, k.value, k.mod_rev
			FROM $schema.kv_meta m
			LEFT JOIN $schema.kv k ON k.key = $1 OR (k.key >= $2 AND k.key < $3)
			ORDER BY k.key`),

		apply: r.Replace(`SELECT $schema.kv_apply($1::text[], $2::bytea[], $3::text, $4::text[], $5::bigint[])`),

		head: r.Replace(`SELECT rev, compact_rev FROM $schema.kv_meta`),

		// One snapshot gives the head, the compaction point and the
		// prefix's events after $1 up to the head (and up to $6 unless
		// NULL), in revision order (at most $2 events; NULL: all). The head is a safe horizon: writers
		// are serialized, so every revision up to it is committed and
		// visible in this snapshot. If the compaction point is past $1 no
		// rows are read: the watch has lost history.
		//
		// A prefix with little history is read through kv_log_key_rev
		// (migration 3): only its own rows, however many revisions other
		// keys took meanwhile. For a prefix that covers most of the log
		// the planner walks the primary key and stops at the limit. The
		// choice depends on the prefix, so the watcher runs this with a
		// plan made for its parameters (never a cached generic plan).
		watch: r.Replace(`SELECT m.rev, m.compact_rev, l.rev, l.key, l.value
			FROM $schema.kv_meta m
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
