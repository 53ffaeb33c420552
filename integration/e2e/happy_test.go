package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/testutil"
)

// beforeStart are configuration changes made before the agent first runs:
// its initial sync must copy them.
var beforeStart = []configStep{
	{"register two nodes (offline)", `SELECT storage.register_pg_instance('db1', 5432, 'bagger'), storage.register_pg_instance('db2', 5432, 'bagger')`},
	{"db1 online", `SELECT storage.set_pg_instance_status((SELECT id FROM storage.postgres_instance WHERE host = 'db1'), 3)`},
	{"kv store settings", `SELECT storage.save_config('kvstore_type', '"etcd"'), storage.save_config('kvstore_config', '{"host": "127.0.0.1", "port": 2379}')`},
	{"first servermap", `SELECT storage.save_servermap('{"nodes": [1]}')`},
	{"a dimension", `SELECT storage.append_dimension('day', NULL, NULL, NULL)`},
}

// afterStart are changes the agent streams.
var afterStart = []configStep{
	{"db2 read-only", `SELECT storage.set_pg_instance_status((SELECT id FROM storage.postgres_instance WHERE host = 'db2'), 1)`},
	{"a node with '/' in its host name", `SELECT storage.register_pg_instance('rack/7', 6432, 'schaufel')`},
	{"two more dimensions, one inserted first", `SELECT storage.append_dimension('customer', 'unknown', NULL, NULL), storage.insert_dimension(0, 'region', NULL, '2020-01-01', NULL)`},
	{"expire a dimension", `SELECT storage.expire_dimension((SELECT id FROM storage.dimension WHERE fieldname = 'customer'), '2030-01-01 00:00:00.123456')`},
	{"an index with fields", `SELECT storage.save_index('bagger_idx', 'gin', NULL, NULL, NULL);
		SELECT storage.append_index_field((SELECT id FROM storage.index WHERE indexname = 'bagger_idx'), 'payload', NULL, NULL);
		SELECT storage.insert_index_field((SELECT id FROM storage.index WHERE indexname = 'bagger_idx'), 0, 'ts', NULL, NULL)`},
	{"expire an index field", `SELECT storage.expire_index_field((SELECT id FROM storage.index_field WHERE expression = 'payload'), '2031-02-03')`},
	{"change the index", `SELECT storage.save_index('bagger_idx', 'btree', NULL, '2040-01-01', NULL)`},
	{"second servermap generation", `SELECT storage.save_servermap('{"nodes": [1, 2]}')`},
	{"update a setting", `SELECT storage.save_config('kvstore_config', '{"host": "10.1.1.1", "port": 2379, "tls": true}')`},
	{"large setting", `SELECT storage.save_config('big', json_build_object('blob', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g)))`},
	{"update leaving the large value unchanged", `UPDATE storage.config SET id = id WHERE key = 'big'`},
	{"move the large setting to another key", `UPDATE storage.config SET key = 'big/moved' WHERE key = 'big'`},
	{"move a node to another port", `UPDATE storage.postgres_instance SET port = 6543 WHERE host = 'db2'`},
	{"delete a setting", `DELETE FROM storage.config WHERE key = 'kvstore_type'`},
	{"several changes in one transaction", `BEGIN;
		SELECT storage.save_config('retention', '"30d"');
		SELECT storage.set_pg_instance_status((SELECT id FROM storage.postgres_instance WHERE host = 'db2'), 3);
		DELETE FROM storage.dimension WHERE fieldname = 'day';
		COMMIT`},
	{"a rolled-back change", `BEGIN; SELECT storage.save_config('never', '1'); ROLLBACK`},
	{"drop the newest servermap: the previous one is in force again", `DELETE FROM storage.servermap WHERE id = (SELECT max(id) FROM storage.servermap)`},
	{"truncate the index fields", `TRUNCATE storage.index_field`},
}

// TestHappyPath is the deployment of the README: migrate up, start the
// agent, configure Bagger through its functions, and stop the agent
// cleanly; once per store driver.
func TestHappyPath(t *testing.T) {
	for _, kind := range []storeKind{storeEtcd, storePGKV} {
		t.Run(string(kind), func(t *testing.T) { testHappyPath(t, kind) })
	}
}

func testHappyPath(t *testing.T, kind storeKind) {
	ctx := context.Background()
	s := newStack(t, kind)
	for _, st := range beforeStart {
		s.exec(ctx, st.sql)
	}
	s.agent.Start()
	start := time.Now()
	s.converge(ctx, 60*time.Second)
	t.Logf("initial sync converged in %v", time.Since(start).Round(time.Millisecond))

	for _, st := range afterStart {
		s.exec(ctx, st.sql)
		// Converging after each step pins a failure to its step.
		if _, err := s.tryConverge(ctx, 30*time.Second); err != nil {
			t.Fatalf("after %q: %v", st.what, err)
		}
	}
	// Spot checks of Bagger-visible keys, beyond the generic comparison.
	for key, want := range map[string]string{
		"/PostgresInstance/rack%2F7/6432": `"host": "rack/7"`,
		"/PostgresInstance/db2/6543":      `"status": 3`,
		"/Servermap":                      `"server_map": {"nodes": [1]}`,
		"/Config/big%2Fmoved":             `"blob": "`,
	} {
		kv, err := s.store.Get(ctx, key)
		if err != nil || !strings.Contains(string(kv.Value), want) {
			t.Errorf("%s = %s, %v; want a value containing %s\nstore:\n%s", key, kv.Value, err, want, s.keysUnder(ctx, "/"))
		}
	}

	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
	checkSlotAtCheckpoint(t, ctx, s)

	// A clean restart resumes where it stopped.
	s.agent.Start()
	s.exec(ctx, `SELECT storage.save_config('after_restart', '{"ok": true}')`)
	s.converge(ctx, 30*time.Second)
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("second SIGTERM: exit code %d, want 0", code)
	}
	if u := s.agent.Unexpected(); len(u) > 0 {
		t.Errorf("the agent exited without being asked to:\n%v", u)
	}
}

// checkSlotAtCheckpoint checks, after a clean exit, that the agent
// confirmed to PostgreSQL exactly what the store's checkpoint says it
// applied: not less (a restart would replay), not more (data loss).
func checkSlotAtCheckpoint(t *testing.T, ctx context.Context, s *stack) {
	t.Helper()
	err := testutil.Poll(ctx, 30*time.Second, "walsender released the slot", func(ctx context.Context) (bool, error) {
		_, active, err := s.slot(ctx)
		return err == nil && !active, err
	})
	if err != nil {
		t.Fatal(err)
	}
	confirmed, _, err := s.slot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := s.checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if confirmed != cp {
		t.Fatalf("after SIGTERM the slot's confirmed_flush_lsn is %s but the store checkpoint is %s", confirmed, cp)
	}
	t.Logf("slot confirmed_flush_lsn = checkpoint = %s", cp)
}
