package migrations_test

import (
	"strings"
	"testing"
)

// What logical decoding carries, seen through test_decoding on a slot of
// the test's own: deletes carry the ids the agent keys rows by, and an
// update that leaves a TOASTed json value unchanged still carries it (in
// the old row, thanks to REPLICA IDENTITY FULL).
func TestReplicaIdentityCarriesWhatTheAgentNeeds(t *testing.T) {
	ctx := testContext(t)
	conn := connect(t, ctx, migrated(t, ctx))
	mustExec(t, ctx, conn, `SELECT storage.save_index('idx', 'btree', NULL, NULL, NULL)`)
	mustExec(t, ctx, conn, `SELECT storage.append_index_field((storage.get_index('idx')).id, 'host', NULL, NULL)`)
	mustExec(t, ctx, conn, `SELECT storage.append_dimension('host', NULL, NULL, NULL)`)
	// Random hex compresses badly, so the value is stored out of line.
	mustExec(t, ctx, conn, `SELECT storage.save_config('big', to_json((SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 4000))))`)
	mustExec(t, ctx, conn, `SELECT pg_create_logical_replication_slot('replident_' || md5(current_database()), 'test_decoding')`)

	// pgtest runs with synchronous_commit=off; decoding reads only flushed WAL.
	mustExec(t, ctx, conn, `SET synchronous_commit = on`)
	mustExec(t, ctx, conn, `DELETE FROM storage.index_field`)
	mustExec(t, ctx, conn, `DELETE FROM storage.dimension`)
	mustExec(t, ctx, conn, `UPDATE storage.config SET key = 'renamed' WHERE key = 'big'`)
	changes := queryStrings(t, ctx, conn, `SELECT data FROM pg_logical_slot_get_changes('replident_' || md5(current_database()), NULL, NULL)
		WHERE data NOT LIKE 'BEGIN%' AND data NOT LIKE 'COMMIT%'`)
	mustExec(t, ctx, conn, `SELECT pg_drop_replication_slot('replident_' || md5(current_database()))`)
	if len(changes) != 3 {
		t.Fatalf("changes: %q", changes)
	}
	for i, want := range []string{
		"table storage.index_field: DELETE: valid_from",
		"table storage.dimension: DELETE: valid_from",
		"table storage.config: UPDATE: old-key: id[integer]:",
	} {
		if !strings.HasPrefix(changes[i], want) {
			t.Errorf("change %d = %.200q, want prefix %q", i, changes[i], want)
		}
	}
	for _, col := range []string{" id[integer]:", " index_id[integer]:"} {
		if !strings.Contains(changes[0], col) {
			t.Errorf("index_field delete lacks%s: %.300q", col, changes[0])
		}
	}
	if !strings.Contains(changes[1], " id[integer]:") {
		t.Errorf("dimension delete lacks id: %.300q", changes[1])
	}
	// New row: value unchanged-toast-datum; old row: the value itself.
	old, newRow, ok := strings.Cut(changes[2], " new-tuple: ")
	if !ok || !strings.Contains(newRow, "value[json]:unchanged-toast-datum") {
		t.Fatalf("config update new tuple: %.300q (test no longer exercises unchanged TOAST)", newRow)
	}
	if !strings.Contains(old, "key[text]:'big' value[json]:'\"") || len(old) < 100000 {
		t.Fatalf("config update old row lacks the TOASTed value (%d bytes): %.300q", len(old), old)
	}
}
