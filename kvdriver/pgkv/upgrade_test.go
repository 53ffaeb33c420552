package pgkv_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pgx/v5"
)

// TestUpgradeFromVersion1: a schema made by the first driver version (no
// Requires) is migrated on Open; its data stays, the old three-argument
// kv_apply call still works, Requires are enforced, and the change log
// gets its key index (version 3).
func TestUpgradeFromVersion1(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v1, err := os.ReadFile("migrations/000001_init.up.sql")
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, dbURL)
	for _, sql := range []string{
		`CREATE SCHEMA old_kv`,
		`SET search_path = old_kv`,
		// As golang-migrate leaves it after version 1.
		`CREATE TABLE pgkv_schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)`,
		`INSERT INTO pgkv_schema_migrations VALUES (1, false)`,
		string(v1),
		`SELECT kv_apply(ARRAY['/old'], ARRAY[convert_to('1', 'UTF8')], NULL)`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%.60s: %v", sql, err)
		}
	}
	s := openStore(t, withParams(dbURL, "schema", "old_kv"))
	kv, err := s.Get(ctx, "/old")
	if err != nil || string(kv.Value) != "1" {
		t.Fatalf("Get(/old) after upgrade = %s, %v; want 1", kv.Value, err)
	}
	if _, err := s.Apply(ctx, []kvdriver.Op{kvdriver.Require("/old", kv.ModRevision+1), kvdriver.Put("/old", []byte("2"))}); !errors.Is(err, kvdriver.ErrConflict) {
		t.Fatalf("Apply with a stale Require after upgrade = %v, want ErrConflict", err)
	}
	rev, err := s.Apply(ctx, []kvdriver.Op{kvdriver.Require("/old", kv.ModRevision), kvdriver.Put("/old", []byte("3"))})
	if err != nil {
		t.Fatalf("Apply with a matching Require after upgrade: %v", err)
	}
	if _, err := conn.Exec(ctx, `SELECT old_kv.kv_apply(ARRAY['/old2'], ARRAY[convert_to('4', 'UTF8')], NULL)`); err != nil {
		t.Fatalf("three-argument kv_apply after upgrade: %v", err)
	}
	if kv, err := s.Get(ctx, "/old"); err != nil || string(kv.Value) != "3" || kv.ModRevision != rev {
		t.Fatalf("Get(/old) = %s @%d, %v; want 3 @%d", kv.Value, kv.ModRevision, err, rev)
	}
	// The down migration restores version 1's kv_apply, and up again works.
	for _, f := range []string{"migrations/000002_require.down.sql", "migrations/000002_require.up.sql"} {
		execFile(t, ctx, conn, f)
		if _, err := conn.Exec(ctx, `SELECT old_kv.kv_apply(ARRAY['/old3'], ARRAY[convert_to('5', 'UTF8')], NULL)`); err != nil {
			t.Fatalf("three-argument kv_apply after %s: %v", f, err)
		}
	}
	if _, err := s.Apply(ctx, []kvdriver.Op{kvdriver.Require("/old", rev+100), kvdriver.Put("/old", []byte("6"))}); !errors.Is(err, kvdriver.ErrConflict) {
		t.Fatalf("Apply with a stale Require after down and up = %v, want ErrConflict", err)
	}

	// Version 3: the change log's key index is there, and down and up work.
	hasIndex := func() bool {
		var ok bool
		if err := conn.QueryRow(ctx, `SELECT to_regclass('old_kv.kv_log_key_rev') IS NOT NULL`).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !hasIndex() {
		t.Fatal("no kv_log_key_rev index after upgrade")
	}
	for i, f := range []string{"migrations/000003_log_key_index.down.sql", "migrations/000003_log_key_index.up.sql"} {
		execFile(t, ctx, conn, f)
		if hasIndex() != (i == 1) {
			t.Fatalf("after %s: index present %t", f, !(i == 1))
		}
	}
	// A watch from the start reads the upgraded log.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	w := collect(s.Watch(wctx, "/old", 1))
	evs := w.until(t, rev, 10*time.Second)
	if len(evs) == 0 || evs[len(evs)-1].Revision != rev {
		t.Fatalf("watch of /old after upgrade: %v, want events up to %d", evs, rev)
	}
}

// execFile runs the SQL file f (a migration) on conn.
func execFile(t *testing.T, ctx context.Context, conn *pgx.Conn, f string) {
	t.Helper()
	sql, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, string(sql)); err != nil {
		t.Fatalf("%s: %v", f, err)
	}
}
