package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/jackc/pgx/v5"
)

// seed fills the Bagger tables through Bagger's functions and plain DML.
func (e *env) seed() {
	e.exec(`SELECT storage.register_pg_instance('db1', 5432, 'bagger')`)
	e.exec(`SELECT storage.register_pg_instance('db/2', 5433, 'bagger')`)
	e.exec(`SELECT storage.save_servermap('{"gen": 1}')`)
	e.exec(`SELECT storage.save_config('retention', '{"days": 30}')`)
	e.exec(`INSERT INTO storage.index (id, indexname, access_method) VALUES (1, 'idx_a', 'btree'), (2, 'idx_b', 'gin')`)
	e.exec(`INSERT INTO storage.index_field (id, index_id, ordinality, expression) VALUES (10, 1, 0, 'host'), (11, 1, 1, 'ts'), (12, 2, 0, 'msg')`)
	e.exec(`INSERT INTO storage.dimension (id, ordinality, fieldname) VALUES (1, 0, 'host')`)
}

func TestInitialSyncThenStream(t *testing.T) {
	e := newEnv(t, "")
	e.seed()
	ctx := context.Background()
	// Left over from an earlier life of the store: a key of the agent's
	// key space without a row goes; a foreign key stays.
	if _, err := e.store.Put(ctx, "/Index/99", []byte(`{"id": 99}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Put(ctx, "/Elsewhere/x", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	a := e.start(e.config())
	waitFor(t, "initial sync", 30*time.Second, func() bool { return a.Status().Streaming })
	if _, ok := e.get("/Index/99"); ok {
		t.Fatal("stale /Index/99 survived the initial sync")
	}
	if _, ok := e.get("/Elsewhere/x"); !ok {
		t.Fatal("initial sync deleted a key outside the agent's key space")
	}
	if _, err := e.store.Delete(ctx, "/Elsewhere/x"); err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
	if got := jsonField(t, mustGet(t, e, "/PostgresInstance/db%2F2/5433"), "host"); got != `"db/2"` {
		t.Fatalf("escaped key holds host %s", got)
	}

	// Insert, update, delete, a key-moving update (delete old + put new in
	// one batch), and the servermap's newest generation.
	e.exec(`SELECT storage.save_config('limit', '{"n": 1}')`)
	e.exec(`UPDATE storage.config SET value = '{"days": 7}' WHERE key = 'retention'`)
	e.exec(`DELETE FROM storage.index_field WHERE id = 12`)
	e.exec(`UPDATE storage.index_field SET index_id = 2 WHERE id = 11`)
	e.exec(`SELECT storage.save_servermap('{"gen": 2}')`)
	e.exec(`SELECT storage.set_pg_instance_status(1, 3)`)
	e.converged(converge.Options{})
	if _, ok := e.get("/Index/1/11"); ok {
		t.Fatal("key-moving update left the old key")
	}
	if got := jsonField(t, mustGet(t, e, "/Servermap"), "server_map"); got != `{"gen": 2}` {
		t.Fatalf("/Servermap = %s, want generation 2", got)
	}
	// Deleting the newest generation brings back the previous one;
	// deleting all removes the key.
	e.exec(`DELETE FROM storage.servermap WHERE id = (SELECT max(id) FROM storage.servermap)`)
	e.converged(converge.Options{})
	if got := jsonField(t, mustGet(t, e, "/Servermap"), "server_map"); got != `{"gen": 1}` {
		t.Fatalf("/Servermap = %s, want generation 1 after deleting 2", got)
	}
	e.exec(`DELETE FROM storage.servermap`)
	e.converged(converge.Options{})

	// Truncate deletes exactly the table's keys: /Index/{id} and
	// /Index/{index_id}/{id} share a prefix.
	e.exec(`TRUNCATE storage.index_field`)
	e.converged(converge.Options{})
	if _, ok := e.get("/Index/1"); !ok {
		t.Fatal("truncating index_field deleted /Index/1")
	}
	// Several changes to one key in one transaction (etcd refuses a key
	// twice in a batch), a truncate followed by inserts. The watcher sees
	// the checkpoint written with the transaction: an idle keepalive may
	// replace it (commit_lsn 0) before the test reads the key.
	w := e.watch()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO storage.config (key, value) VALUES ('k', '1')`,
		`UPDATE storage.config SET value = '2' WHERE key = 'k'`,
		`UPDATE storage.config SET key = 'k2' WHERE key = 'k'`,
		`UPDATE storage.config SET key = 'k' WHERE key = 'k2'`,
		`TRUNCATE storage.dimension`,
		`INSERT INTO storage.dimension (id, ordinality, fieldname) VALUES (5, 0, 'a/b')`,
	} {
		if _, err := tx.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	e.converged(converge.Options{})
	var ck Checkpoint
	cks, _ := w.checkpoints(t, CheckpointKey("", e.slot))
	for _, c := range cks {
		if c.CommitLSN != 0 {
			ck = c
		}
	}
	if ck.CommitLSN == 0 || ck.LSN <= ck.CommitLSN {
		t.Fatalf("checkpoints %+v: want one with the commit end LSN after the commit LSN", cks)
	}
	if _, ok := ck.Tables["storage.config"]; !ok || len(ck.Tables) != 6 {
		t.Fatalf("checkpoint tables %v", ck.Tables)
	}
}

func mustGet(t *testing.T, e *env, key string) string {
	t.Helper()
	v, ok := e.get(key)
	if !ok {
		t.Fatalf("%s missing", key)
	}
	return v
}

// Keys under a prefix with a configured template; the store's other keys
// are left alone.
func TestPrefixAndTemplates(t *testing.T) {
	e := newEnv(t, "")
	e.seed()
	ctx := context.Background()
	if _, err := e.store.Put(ctx, "/Config/retention", []byte(`"not the agent's"`)); err != nil {
		t.Fatal(err)
	}
	cfg := e.config()
	cfg.Prefix = "/bagger"
	cfg.Templates = map[string]string{"storage.config": "/Cfg/{key}/{id}"}
	e.run(cfg)
	e.exec(`SELECT storage.save_config('a/b', '1')`)
	opts := converge.Options{Prefix: cfg.Prefix, Templates: cfg.Templates}
	e.converged(opts)
	if _, ok := e.get("/Config/retention"); !ok {
		t.Fatal("a key outside the prefix was deleted")
	}
	if _, ok := e.get(CheckpointKey("/bagger", e.slot)); !ok {
		t.Fatal("no checkpoint under the prefix")
	}
	e.exec(`TRUNCATE storage.config`)
	e.converged(opts)
}

// A second agent on the same slot waits as a standby (blocked on the
// slot's agent lock) and takes over when the first stops.
func TestSecondAgentWaitsForSlot(t *testing.T) {
	e := newStreamingEnv(t)
	cfg := e.config()
	cfg.StandbyRetry = 50 * time.Millisecond // lock_timeout 250ms
	second := newAgent(t, cfg)
	stopSecond := runAgent(t, "second agent", second)
	defer stopSecond()
	waitFor(t, "the second agent to wait as a standby", 20*time.Second, func() bool { return second.Status().Standby })
	// It keeps waiting through lock_timeout rounds on one session: the
	// same backend waits for the agent lock in ever new statements (a
	// round that ends by lock_timeout starts the next).
	var waiter int32
	starts := map[time.Time]bool{}
	waitFor(t, "two lock_timeout rounds", 20*time.Second, func() bool {
		var pid int32
		var start time.Time
		err := e.db.QueryRow(context.Background(), `SELECT a.pid, a.query_start FROM pg_locks l JOIN pg_stat_activity a USING (pid)
			WHERE l.locktype = 'advisory' AND NOT l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&pid, &start)
		if errors.Is(err, pgx.ErrNoRows) { // between two rounds
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		if waiter == 0 {
			waiter = pid
		}
		if pid != waiter {
			t.Fatalf("the standby waits on backend %d, then on %d: not one session", waiter, pid)
		}
		starts[start] = true
		return len(starts) >= 3
	})
	if st := second.Status(); st.Active || st.Streaming || !st.Standby || st.Err != nil {
		t.Fatalf("standby: active %v, streaming %v, standby %v, err %v", st.Active, st.Streaming, st.Standby, st.Err)
	}
	e.exec(`SELECT storage.save_config('first', '1')`)
	e.converged(converge.Options{})
	e.stop()
	e.exec(`SELECT storage.save_config('second', '2')`)
	e.converged(converge.Options{})
	if second.Status().Transactions == 0 {
		t.Fatal("the second agent applied nothing after taking over")
	}
}

// Columns named like the aliases the copy and the checker give their table
// (t, r) must not turn the whole-row to_jsonb into a column's value.
func TestColumnsNamedLikeAliases(t *testing.T) {
	e := newEnv(t, "")
	e.exec(`CREATE TABLE storage.odd (id int PRIMARY KEY, t text, r text)`)
	e.exec(`ALTER TABLE storage.odd REPLICA IDENTITY FULL`)
	e.exec(`ALTER PUBLICATION bagger_lw_storage ADD TABLE storage.odd`)
	e.exec(`INSERT INTO storage.odd VALUES (1, 'tee', 'arr')`)
	e.run(e.config())
	e.converged(converge.Options{})
	if v := mustGet(t, e, "/storage/odd/1"); v != `{"r": "arr", "t": "tee", "id": 1}` {
		t.Fatalf("/storage/odd/1 = %s", v)
	}
	e.exec(`INSERT INTO storage.odd VALUES (2, 'x', 'y')`)
	e.converged(converge.Options{})
}
