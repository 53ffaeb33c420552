package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestFailover runs two agents on one slot and store, started together on
// an empty store: one streams, the other gets "replication slot is active"
// and must wait and retry, not crash, and neither may disturb the other's
// work. Killing whichever is active hands over to the other.
func TestFailover(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, storeEtcd)
	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger');
		INSERT INTO storage.config (key, value) SELECT 'c' || g, to_json(g) FROM generate_series(1, 500) g`)
	a, b := s.agent, s.addAgent("agent-b")
	a.Start()
	b.Start()
	s.converge(ctx, 60*time.Second)

	agents := []*agentProc{a, b}
	for round := range 4 {
		s.exec(ctx, fmt.Sprintf(`SELECT storage.save_config('round', '%d'), storage.set_pg_instance_status(1, %d)`, round, round%4))
		s.converge(ctx, 30*time.Second)
		victim := agents[round%2]
		victim.Kill()
		s.exec(ctx, fmt.Sprintf(`SELECT storage.save_config('after_kill_%d', '%d')`, round, round))
		// The survivor takes over within its retry backoff.
		s.converge(ctx, 60*time.Second)
		victim.Start()
	}
	for i, ag := range agents {
		if u := ag.Unexpected(); len(u) > 0 {
			t.Errorf("agent %d exited without being asked to (a standby must retry):\n%v", i, u)
		}
	}
	// Both past their start: one streaming, the other waiting for the slot.
	for _, ag := range agents {
		if err := ag.waitLog(ctx, 30*time.Second, "msg=streaming", "used by another consumer"); err != nil {
			t.Fatal(err)
		}
	}
	for i, ag := range agents {
		if code := ag.Terminate(30 * time.Second); code != 0 {
			t.Errorf("agent %d: SIGTERM: exit code %d, want 0", i, code)
		}
	}
	checkSlotAtCheckpoint(t, ctx, s)
}

// TestDuelingInitialSync wipes the store and starts two agents at once,
// several rounds, while writers commit: both see no checkpoint and race to
// recreate the slot and copy a snapshot. Whoever wins, no change committed
// during the race may be lost: after each round the store must equal the
// database.
func TestDuelingInitialSync(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, storeEtcd)
	a, b := s.agent, s.addAgent("agent-b")
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	w := newWorkload()
	for round := range 3 {
		a.Kill()
		b.Kill()
		wipeStore(t, s)
		wctx, stop := context.WithTimeout(ctx, time.Duration(500+r.IntN(1500))*time.Millisecond)
		var wg sync.WaitGroup
		for i := range 2 {
			wr := rand.New(rand.NewPCG(r.Uint64(), uint64(i)))
			wg.Go(func() { w.write(wctx, s.pool, wr) })
		}
		a.Start()
		b.Start()
		wg.Wait()
		stop()
		if _, err := s.tryConverge(ctx, 60*time.Second); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	t.Logf("workload: %d transactions committed", w.committed.Load())
	for i, ag := range []*agentProc{a, b} {
		if u := ag.Unexpected(); len(u) > 0 {
			t.Errorf("agent %d exited without being asked to:\n%v", i, u)
		}
	}
}

// TestAgentStartsBeforePostgres starts the agent while PostgreSQL is down,
// as `docker compose up` or a reboot does: it must wait for the server
// and then mirror it, not exit.
func TestAgentStartsBeforePostgres(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, storeEtcd)
	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger')`)
	s.lever("stop PostgreSQL", s.StopPostgres)
	s.agent.Start()
	// Give it time to fail if it is going to; nothing to poll for while the
	// server is down but the process itself.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) && s.agent.Running() {
		time.Sleep(100 * time.Millisecond)
	}
	if !s.agent.Running() {
		t.Fatalf("the agent exited while PostgreSQL was down: %v", s.agent.Unexpected())
	}
	s.lever("start PostgreSQL", s.StartPostgres)
	s.execRetry(ctx, `SELECT storage.save_config('up', 'true')`)
	s.converge(ctx, 60*time.Second)
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
}

// TestSIGTERMDuringStoreOutage stops etcd under a streaming agent, commits
// a change the agent cannot apply, and sends SIGTERM: the agent must
// abandon the transaction and exit 0, and apply it after a restart.
func TestSIGTERMDuringStoreOutage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, storeEtcd)
	s.agent.Start()
	s.converge(ctx, 60*time.Second)

	stopEtcd(t, s, false)
	s.exec(ctx, `SELECT storage.save_config('during_outage', '1')`)
	if err := s.agent.waitLog(ctx, 30*time.Second, "retrying", "reconnecting"); err != nil {
		t.Fatal(err)
	}
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Errorf("SIGTERM while the store is down and a transaction waits: exit code %d, want 0", code)
	}

	startEtcd(t, s)
	s.agent.Start()
	s.converge(ctx, 60*time.Second)
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Errorf("SIGTERM: exit code %d, want 0", code)
	}
	checkSlotAtCheckpoint(t, ctx, s)
}

// TestAgentStartsBeforeStore starts the agent while etcd is down, as
// `docker compose up` or a reboot may: like a store outage that begins
// after the start, it must wait for the store with backoff, not exit, and
// SIGTERM while it waits is a clean exit.
func TestAgentStartsBeforeStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := newStack(t, storeEtcd)
	s.exec(ctx, `SELECT storage.register_pg_instance('db1', 5432, 'bagger')`)
	stopEtcd(t, s, false)
	s.agent.Start()
	// An outage of some seconds: the agent must outlast it.
	const outage = 8 * time.Second
	deadline := time.Now().Add(outage)
	for time.Now().Before(deadline) && s.agent.Running() {
		time.Sleep(100 * time.Millisecond)
	}
	if !s.agent.Running() {
		t.Errorf("the agent exited while the store was down at its start (an outage of %v): %v", outage, s.agent.Unexpected())
	} else if code := s.agent.Terminate(30 * time.Second); code != 0 {
		// An operator giving up on a store that does not come.
		t.Errorf("SIGTERM while waiting for the store: exit code %d, want 0", code)
	}
	s.agent.Start()
	startEtcd(t, s)
	s.converge(ctx, 60*time.Second)
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
}
