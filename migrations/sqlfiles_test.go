package migrations_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pglogrepl"
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

// Cancelling stops between migrations, each of which is one transaction:
// the database is left clean at the last migration applied.
func TestCancelStopsBetweenMigrations(t *testing.T) {
	ctx := testContext(t)
	raw := pgtest.NewDatabase(t)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	err := migrations.Up(cctx, raw, migrations.Options{Log: func(msg string) {
		if strings.HasPrefix(msg, "2/u") {
			cancel()
		}
	}})
	v, dirty, verr := migrations.Version(ctx, raw)
	if verr != nil || dirty {
		t.Fatalf("after cancel: version %d dirty %v, %v", v, dirty, verr)
	}
	t.Logf("stopped at version %d: %v", v, err)
	switch {
	case errors.Is(err, context.Canceled) && v >= 2 && v < lastVersion():
	case err == nil && v == lastVersion(): // finished before the stop arrived
	default:
		t.Fatalf("Up cancelled after 2/u: %v, version %d", err, v)
	}
	if err := migrations.Up(ctx, raw, migrations.Options{}); err != nil {
		t.Fatalf("Up after cancel: %v", err)
	}
}

// Cancelling during a migration cancels its statement: here the slot
// creation, which waits for a transaction left open elsewhere.
func TestCancelInterruptsWaitingSlotCreation(t *testing.T) {
	ctx := testContext(t)
	raw := pgtest.NewDatabase(t)
	blocker := connect(t, ctx, raw)
	mustExec(t, ctx, blocker, "BEGIN")
	mustExec(t, ctx, blocker, "SELECT txid_current()") // holds an xid: slot creation waits for it
	watcher := connect(t, ctx, raw)

	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- migrations.Up(cctx, raw, migrations.Options{Slot: "interrupted"}) }()
	deadline := time.Now().Add(30 * time.Second)
	for !queryBool(t, ctx, watcher, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE application_name LIKE 'lenkwerk-migrate-%'
			AND datname = current_database() AND query LIKE '%pg_create_logical_replication_slot%' AND wait_event_type = 'Lock')`) {
		if time.Now().After(deadline) {
			t.Fatal("the migration never waited in slot creation")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	var err error
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Up did not return after cancel")
	}
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "lenkwerk migrate force 6") {
		t.Fatalf("Up cancelled in slot creation: %v", err)
	}
	mustExec(t, ctx, blocker, "COMMIT")
	if s := inspect(t, ctx, watcher); len(s.Slots) != 0 {
		t.Fatalf("cancelled slot creation left slots %q", s.Slots)
	}
	if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != 7 || !dirty {
		t.Fatalf("after cancel: %d %v %v; want 7 dirty", v, dirty, err)
	}
	if err := migrations.Force(ctx, raw, 6); err != nil {
		t.Fatal(err)
	}
	if err := migrations.Up(ctx, raw, migrations.Options{}); err != nil {
		t.Fatalf("Up after force: %v", err)
	}
}

// Down refuses, before anything runs, to drop a slot an agent streams.
func TestDownRefusesActiveSlot(t *testing.T) {
	ctx := testContext(t)
	raw := migrated(t, ctx)
	repl, err := pgconn.Connect(ctx, raw+"&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close(context.Background())
	if err := pglogrepl.StartReplication(ctx, repl, migrations.DefaultSlot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + migrations.DefaultPublication + "'"},
	}); err != nil {
		t.Fatal(err)
	}
	// Down through the slot's migration (7).
	steps := int(lastVersion()) - 6
	err = migrations.Down(ctx, raw, steps, migrations.Options{})
	if err == nil || !strings.Contains(err.Error(), "in use by process") || !strings.Contains(err.Error(), "stop the Lenkwerk agent") {
		t.Fatalf("Down with the slot streamed: %v", err)
	}
	if v, dirty, err := migrations.Version(ctx, raw); err != nil || v != lastVersion() || dirty {
		t.Fatalf("refused Down: version %d dirty %v, %v", v, dirty, err)
	}
	// Once the consumer is gone, down drops the slot.
	repl.Close(ctx)
	conn := connect(t, ctx, raw)
	deadline := time.Now().Add(30 * time.Second)
	for queryBool(t, ctx, conn, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, migrations.DefaultSlot) {
		if time.Now().After(deadline) {
			t.Fatal("slot stays active after the consumer closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := migrations.Down(ctx, raw, steps, migrations.Options{}); err != nil {
		t.Fatalf("Down with the slot idle: %v", err)
	}
	if s := inspect(t, ctx, conn); len(s.Slots) != 0 {
		t.Fatalf("slots after Down through 7: %q", s.Slots)
	}
}
