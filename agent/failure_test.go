package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/pgjson"
	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd"
	"github.com/bagger/lenkwerk/kvdriver/mem"
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv"
	"github.com/jackc/pgx/v5"
)

func (e *env) useStore(t *testing.T, rawURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	store, err := kvdriver.Open(ctx, rawURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e.store = store
}

// The agent works with every driver: a short life on etcd and pgkv,
// including a transaction above etcd's 128 operations.
func TestDrivers(t *testing.T) {
	for _, name := range []string{"etcd", "pgkv"} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, "")
			switch name {
			case "etcd":
				e.useStore(t, etcdtest.New(t).URL())
			case "pgkv":
				e.useStore(t, pgtest.NewDatabase(t))
			}
			e.seed()
			e.run(e.config())
			e.converged(converge.Options{})
			e.exec(`INSERT INTO storage.config (key, value) SELECT 'k' || g, json_build_object('n', g) FROM generate_series(1, 500) g`)
			e.exec(`UPDATE storage.index_field SET index_id = 2 WHERE id = 11`)
			e.exec(`SELECT storage.save_servermap('{"gen": 2}')`)
			e.converged(converge.Options{})
			e.exec(`TRUNCATE storage.config`)
			e.converged(converge.Options{})
		})
	}
}

// A store outage: writes are retried in place while status updates keep
// the replication connection alive (here for four times the server's
// wal_sender_timeout), then the agent lets go of the slot and reconnects
// until the store is back; nothing is lost.
func TestStoreOutage(t *testing.T) {
	c := pgtest.StartCluster(t, pgtest.Options{Settings: map[string]string{"wal_sender_timeout": "'1s'"}})
	e := newEnv(t, c.NewDatabase(t))
	srv := etcdtest.New(t)
	e.useStore(t, srv.URL())
	cfg := e.config()
	cfg.StoreRetry = 4 * time.Second
	a := e.run(cfg)
	e.exec(`SELECT storage.save_config('before', '1')`)
	e.converged(converge.Options{})
	walsender := e.slotPID()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		e.exec(fmt.Sprintf(`SELECT storage.save_config('during%d', '2')`, i))
	}
	waitFor(t, "a failed store write", 30*time.Second, func() bool { return a.Status().StoreErr != nil })
	// While the writes are retried the walsender must not time out.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if a.Status().Err != nil {
			break
		}
		// The session may end (StoreRetry) between the two reads: its
		// walsender goes with it; only a walsender gone while the session
		// still retried is a timeout.
		if pid := e.slotPID(); pid != walsender && a.Status().Err == nil {
			t.Fatalf("walsender %d replaced by %d during in-place retries (wal_sender_timeout)", walsender, pid)
		}
	}
	waitFor(t, "the session to end on the store's outage", 30*time.Second, func() bool { return a.Status().Err != nil })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.exec(`SELECT storage.save_config('after', '3')`)
	e.converged(converge.Options{})
}

// A PostgreSQL restart: the agent reconnects with backoff and resumes from
// its checkpoint. The store (pgkv) is on the same server: the walsender's
// shutdown waits for the agent, whose store writes fail meanwhile, so the
// agent must let go of the slot rather than retry forever.
func TestPostgresRestart(t *testing.T) {
	c := pgtest.StartCluster(t, pgtest.Options{})
	e := newEnv(t, c.NewDatabase(t))
	e.useStore(t, c.NewDatabase(t))
	e.seed()
	a := e.run(e.config())
	e.converged(converge.Options{})
	before := a.Status().Transactions
	// A transaction the walsender has sent but the agent cannot store
	// while the server stops.
	e.exec(`SELECT storage.save_config('before_restart', '1')`)
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	db, err := pgx.Connect(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(ctx) })
	e.db = db
	e.exec(`SELECT storage.save_config('after_restart', '1')`)
	e.exec(`SELECT storage.set_pg_instance_status(1, 1)`)
	e.converged(converge.Options{})
	waitFor(t, "streaming again", 30*time.Second, func() bool { return a.Status().Streaming })
	if got := a.Status().Transactions - before; got != 3 {
		t.Errorf("%d transactions applied around the restart, want 3", got)
	}
}

// A table whose deletes would not carry its key columns stops the agent
// with an error naming the table; nothing after it is applied.
func TestBadReplicaIdentity(t *testing.T) {
	e := newStreamingEnv(t)
	a := e.agent
	e.exec(`ALTER TABLE storage.index_field REPLICA IDENTITY DEFAULT`)
	e.exec(`INSERT INTO storage.index_field (id, index_id, ordinality, expression) VALUES (20, 2, 5, 'x')`)
	e.exec(`SELECT storage.save_config('later', '1')`)
	var err error
	waitFor(t, "the error", 30*time.Second, func() bool { err = a.Status().Err; return err != nil })
	for _, want := range []string{"storage.index_field", "/Index/{index_id}/{id}", "replica identity"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if _, ok := e.get("/Config/later"); ok {
		t.Error("a later transaction was applied past the failing one")
	}
	// The checkpoint may still move up to the failing transaction (a
	// group commit or keepalive written after the store converged), never
	// to it or past it: a restart would then skip the failing change.
	var ve *ValueError
	if !errors.As(err, &ve) || ve.CommitLSN == 0 {
		t.Fatalf("error %v: want a ValueError with the commit LSN", err)
	}
	if got := e.checkpoint().LSN; got >= ve.CommitLSN {
		t.Errorf("checkpoint %s reached the failing transaction's commit %s", got, ve.CommitLSN)
	}
}

// A value beyond the store's limit is an error naming table and key.
func TestValueTooLarge(t *testing.T) {
	e := newEnv(t, "")
	store, err := mem.Open(context.Background(), mem.Config{Limits: kvdriver.Limits{MaxValueBytes: 1000}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e.store = store
	a := e.run(e.config())
	e.exec(`SELECT storage.save_config('huge', json_build_object('s', repeat('x', 2000)))`)
	var got error
	waitFor(t, "the error", 30*time.Second, func() bool { got = a.Status().Err; return got != nil })
	if !errors.Is(got, kvdriver.ErrTooLarge) || !strings.Contains(got.Error(), "storage.config") || !strings.Contains(got.Error(), "/Config/huge") {
		t.Fatalf("error %v: want ErrTooLarge naming storage.config and /Config/huge", got)
	}
}

// A column of a type the encoder cannot match to_jsonb for (here: an enum
// with a cast to json, which to_jsonb calls) is an error naming the table
// and the type.
func TestUnsupportedType(t *testing.T) {
	e := newEnv(t, "")
	e.exec(`CREATE TYPE storage.mood AS ENUM ('glad', 'sad')`)
	e.exec(`CREATE FUNCTION storage.mood_json(storage.mood) RETURNS json LANGUAGE sql AS $$ SELECT json_build_object('mood', $1::text) $$`)
	e.exec(`CREATE CAST (storage.mood AS json) WITH FUNCTION storage.mood_json(storage.mood)`)
	e.exec(`CREATE TABLE storage.moods (id int PRIMARY KEY, m storage.mood)`)
	e.exec(`ALTER TABLE storage.moods REPLICA IDENTITY FULL`)
	e.exec(`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.moods`)
	a := e.run(e.config())
	e.exec(`INSERT INTO storage.moods VALUES (1, 'glad')`)
	var err error
	waitFor(t, "the error", 30*time.Second, func() bool { err = a.Status().Err; return err != nil })
	if !errors.Is(err, pgjson.ErrUnsupportedType) || !strings.Contains(err.Error(), "storage.moods") || !strings.Contains(err.Error(), "mood") {
		t.Fatalf("error %v: want ErrUnsupportedType naming storage.moods and the type", err)
	}
}
