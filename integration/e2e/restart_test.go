package e2e

import (
	"context"
	"testing"
	"time"
)

// TestPostgresRestart restarts PostgreSQL (fast shutdown, as pg_ctl stop
// does by default) under a running agent, once per store. The shutdown must
// finish promptly: the server waits for the agent's walsender to be
// confirmed up to everything sent, so an agent that cannot confirm idle
// positions keeps the server from stopping. With pgkv the store is on the
// server being stopped. Afterwards the agent reconnects by itself and
// mirrors what changed.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	for _, kind := range []storeKind{storeEtcd, storePGKV} {
		t.Run(string(kind), func(t *testing.T) { testPostgresRestart(t, kind) })
	}
}

func testPostgresRestart(t *testing.T, kind storeKind) {
	ctx := context.Background()
	s := newStack(t, kind)
	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger')`)
	s.agent.Start()
	s.converge(ctx, 60*time.Second)
	s.exec(ctx, `SELECT storage.save_config('before_restart', '1')`)
	s.converge(ctx, 30*time.Second)

	// WAL the agent has no transaction for (as other databases of a busy
	// server write): at shutdown the agent must confirm past it.
	s.exec(ctx, `SELECT pg_logical_emit_message(false, 'lenkwerk-e2e', 'unrelated WAL')`)

	const shutdownLimit = 10 * time.Second
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- s.RestartPostgres(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("restart PostgreSQL: %v", err)
		}
		t.Logf("PostgreSQL restarted in %v", time.Since(start).Round(time.Millisecond))
	case <-time.After(shutdownLimit):
		s.agent.Kill() // lets the walsender, and so the shutdown, finish
		err := <-done
		t.Fatalf("PostgreSQL fast shutdown did not finish within %v with the agent running: the walsender waits for the agent to confirm everything it sent; once the agent was killed the restart returned (err %v) after %v",
			shutdownLimit, err, time.Since(start).Round(time.Millisecond))
	}

	s.execRetry(ctx, `SELECT storage.save_config('after_restart', '2'), storage.set_pg_instance_status(1, 3)`)
	s.converge(ctx, 60*time.Second)
	if u := s.agent.Unexpected(); len(u) > 0 {
		t.Errorf("the agent exited without being asked to (it must reconnect after a PostgreSQL restart):\n%v", u)
	}
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
	checkSlotAtCheckpoint(t, ctx, s)
}
