package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/harness"
)

// TestResyncRepairsStore runs the agent with a prefix and a key template
// of its own. Its initial sync must delete keys in its key space that match
// no row and leave keys outside it alone; `lenkwerk resync` must repair a
// store damaged behind the agent's back (its checkpoint intact).
func TestResyncRepairsStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, storeEtcd, harness.WithPrefix("/bagger"), harness.WithKeyTemplate("storage.config", "/Cfg/{key}"))

	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger'), storage.save_config('a', '1'), storage.append_dimension('day', NULL, NULL, NULL)`)
	outside := map[string]string{"/elsewhere/x": `1`, "/baggerX/y": `2`, "/Cfg/a": `3`}
	for k, v := range map[string]string{
		"/bagger/Cfg/ghost":               `{"id": 9}`,
		"/bagger/PostgresInstance/gone/1": `{}`,
		"/bagger/Index/77/5":              `{}`,
		"/bagger/Servermap":               `{"id": 1, "server_map": {}}`,
	} {
		outside[k] = "" // must be deleted
		if _, err := s.store.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range outside {
		if v != "" {
			if _, err := s.store.Put(ctx, k, []byte(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.agent.Start()
	s.converge(ctx, 60*time.Second)
	checkOutside := func(when string) {
		for k, v := range outside {
			if v == "" {
				continue
			}
			kv, err := s.store.Get(ctx, k)
			if err != nil || string(kv.Value) != v {
				t.Errorf("%s: key %s outside the agent's key space = %q, %v; want %s untouched", when, k, kv.Value, err, v)
			}
		}
	}
	checkOutside("after the initial sync")

	// Damage behind the agent's back; its checkpoint stays.
	s.agent.Kill()
	if _, err := s.store.Delete(ctx, "/bagger/Cfg/a"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.Put(ctx, "/bagger/Dimension/1", []byte(`{"id": 1}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.Put(ctx, "/bagger/Dimension/999", []byte(`{"id": 999}`)); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	out, err := s.Lenkwerk(rctx, append([]string{"resync"}, s.AgentFlags()...)...)
	cancel()
	if err != nil {
		t.Fatalf("lenkwerk resync: %v\n%s", err, out)
	}
	s.converge(ctx, 30*time.Second)
	checkOutside("after resync")

	s.agent.Start()
	s.exec(ctx, `SELECT storage.save_config('b', '2'), storage.set_pg_instance_status(1, 3)`)
	s.converge(ctx, 30*time.Second)
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
	checkSlotAtCheckpoint(t, ctx, s)
}
