package migrations_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5/pgconn"
)

// runScript runs an operator SQL file as psql -f would (one simple-protocol
// round trip per file) and returns each statement's result.
func runScript(t *testing.T, ctx context.Context, conn *pgconn.PgConn, name string) []*pgconn.Result {
	t.Helper()
	sql, err := os.ReadFile(filepath.Join("..", "sql", name))
	if err != nil {
		t.Fatal(err)
	}
	results, err := conn.Exec(ctx, string(sql)).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	for i, r := range results {
		if r.Err != nil {
			t.Fatalf("%s statement %d: %v", name, i+1, r.Err)
		}
	}
	return results
}

// The operator SQL in sql/ stays true against the schema.
func TestOperatorSQL(t *testing.T) {
	ctx := testContext(t)
	conn := connect(t, ctx, migrated(t, ctx))
	runScript(t, ctx, conn.PgConn(), "configure-examples.sql")
	for _, c := range []struct {
		sql  string
		want bool
	}{
		{`SELECT status = 3 FROM storage.postgres_instance WHERE host = 'pg1.example.net'`, true},
		{`SELECT status = 1 FROM storage.postgres_instance WHERE host = 'pg2.example.net'`, true},
		{`SELECT string_agg(fieldname, ',' ORDER BY ordinality) = 'tenant,host,app' FROM storage.dimension`, true},
		{`SELECT (value->>'port')::int = 2379 FROM storage.config WHERE key = 'kvstore_config'`, true},
		{`SELECT count(*) = 2 FROM storage.index_field`, true},
		{`SELECT (server_map->>'version')::int = 1 FROM storage.most_recent_servermap()`, true},
		{`SELECT current_user = session_user`, true}, // SET LOCAL ROLE ended with the transaction
	} {
		if got := queryBool(t, ctx, conn, c.sql); got != c.want {
			t.Errorf("after configure-examples.sql: %s = %v", c.sql, got)
		}
	}

	results := runScript(t, ctx, conn.PgConn(), "monitor-slot.sql")
	if len(results) != 4 {
		t.Fatalf("monitor-slot.sql: %d results, want 4", len(results))
	}
	if slot := results[0]; len(slot.Rows) != 1 || string(slot.Rows[0][0]) != migrations.DefaultSlot || string(slot.Rows[0][1]) != "pgoutput" {
		t.Fatalf("monitor-slot.sql slot query: %d rows %q", len(slot.Rows), slot.Rows)
	}
	if pubs := results[3]; len(pubs.Rows) != len(publishedTables) {
		t.Fatalf("monitor-slot.sql publication query: %d rows", len(pubs.Rows))
	}
}

func TestCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := migrations.Up(ctx, "postgres://postgres@127.0.0.1:1/x", migrations.Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Up with a cancelled context: %v", err)
	}
}
