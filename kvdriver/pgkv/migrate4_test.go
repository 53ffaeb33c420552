package pgkv_test

import (
	"os"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
)

// TestMigration4DownAndUp: version 4's down migration restores version
// 3's kv_apply (a synchronous commit, at least local, inside the revision
// lock, even when other writers wait) and drops kv_sync and the token; up
// again brings back the asynchronous commit under contention, and the store
// writes, reads and watches as before.
func TestMigration4DownAndUp(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	s := openStore(t, withParams(dbURL, "poll-interval", "100ms"))
	ctx := ctxT(t)
	before, err := s.Put(ctx, "/m4/a", []byte(`1`))
	if err != nil {
		t.Fatal(err)
	}
	conn := connect(t, withParams(dbURL, "options", "-c synchronous_commit=off -c search_path=lenkwerk_kv"))
	// With another writer waiting (contend).
	commitSetting := func() string {
		t.Helper()
		defer contend(t, dbURL)()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `SELECT kv_apply(ARRAY['/m4/b'], ARRAY[convert_to('2', 'UTF8')], NULL)`); err != nil {
			t.Fatal(err)
		}
		var setting string
		if err := tx.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&setting); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		return setting
	}
	has := func(sql string) bool {
		t.Helper()
		var ok bool
		if err := conn.QueryRow(ctx, sql).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return ok
	}
	const (
		hasSync  = `SELECT to_regprocedure('lenkwerk_kv.kv_sync(text)') IS NOT NULL`
		hasToken = `SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = 'lenkwerk_kv' AND table_name = 'kv_meta' AND column_name = 'sync_token')`
	)
	if got := commitSetting(); got != "off" || !has(hasSync) || !has(hasToken) {
		t.Fatalf("version 4: kv_apply commits with synchronous_commit %q, kv_sync %t, token %t; want off, true, true", got, has(hasSync), has(hasToken))
	}
	for i, f := range []string{"migrations/000004_async_commit.down.sql", "migrations/000004_async_commit.up.sql"} {
		sql, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, string(sql)); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		up := i == 1
		want := map[bool]string{false: "local", true: "off"}[up]
		if got := commitSetting(); got != want || has(hasSync) != up || has(hasToken) != up {
			t.Fatalf("after %s: kv_apply commits with synchronous_commit %q, kv_sync %t, token %t; want %q, %t, %t", f, got, has(hasSync), has(hasToken), want, up, up)
		}
	}
	// A new store (the token changed) writes, reads and watches.
	s = openStore(t, withParams(dbURL, "poll-interval", "100ms"))
	w := collect(s.Watch(ctx, "/m4", before))
	rev, err := s.Put(ctx, "/m4/c", []byte(`3`))
	if err != nil {
		t.Fatal(err)
	}
	if kv, err := s.Get(ctx, "/m4/c"); err != nil || kv.ModRevision != rev {
		t.Fatalf("Get(/m4/c) = %v, %v; want revision %d", kv, err, rev)
	}
	evs := w.until(t, rev, 10*time.Second)
	checkSequence(t, evs, before, rev)
}
