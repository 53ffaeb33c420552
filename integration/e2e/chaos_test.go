package e2e

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// chaosSeed returns LENKWERK_CHAOS_SEED or a fresh seed.
func chaosSeed(t *testing.T) uint64 {
	if s := os.Getenv("LENKWERK_CHAOS_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("LENKWERK_CHAOS_SEED=%q: %v", s, err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

// chaosDuration is how long writers and faults run: LENKWERK_CHAOS_DURATION
// (a Go duration) or 35s, which keeps the whole test well under 3 minutes.
func chaosDuration(t *testing.T) time.Duration {
	if s := os.Getenv("LENKWERK_CHAOS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("LENKWERK_CHAOS_DURATION=%q: %v", s, err)
		}
		return d
	}
	return 35 * time.Second
}

// TestChaos is the randomized test of the agent: concurrent writers make
// random changes through Bagger's functions and plain DML (key-moving
// updates, deletes, truncates, large json left unchanged by updates, bulk
// transactions larger than an etcd batch, rollbacks) while the agent
// process is SIGKILLed at random moments and restarted and etcd is stopped
// and started, and PostgreSQL restarts now and then. Afterwards the store must equal the database: every key
// to_jsonb of its row, no other key. Then SIGTERM must exit 0 with the
// slot confirmed exactly up to the store's checkpoint.
//
// The seed is logged; LENKWERK_CHAOS_SEED=<seed> replays the same choices
// (the interleaving of concurrent writers and the agent still varies).
func TestChaos(t *testing.T) {
	seed := chaosSeed(t)
	t.Logf("chaos seed %d (replay: LENKWERK_CHAOS_SEED=%d)", seed, seed)
	duration := chaosDuration(t)
	ctx := context.Background()

	s := newStack(t, storeEtcd)
	// Some state before the agent's first start: the initial sync copies it.
	seedRand := rand.New(rand.NewPCG(seed, 0))
	for range 30 {
		o := randomOp(seedRand)
		sql, args := o.sql(seedRand)
		_, _ = s.pool.Exec(ctx, sql, args...)
	}
	s.agent.Start()

	// Writers.
	w := newWorkload()
	wctx, stopWriters := context.WithTimeout(ctx, duration)
	defer stopWriters()
	var wg sync.WaitGroup
	const writers = 3
	for i := range writers {
		r := rand.New(rand.NewPCG(seed, uint64(i)+1))
		wg.Go(func() { w.write(wctx, s.pool, r) })
	}

	// Faults: one goroutine, so each fault is logged in order.
	r := rand.New(rand.NewPCG(seed, 1000))
	var kills, etcdStops, both, pgRestarts int
	sleep := func(max time.Duration) {
		d := time.Duration(r.Int64N(int64(max)))
		select {
		case <-wctx.Done():
		case <-time.After(d):
		}
	}
	for wctx.Err() == nil {
		sleep(2500 * time.Millisecond)
		if wctx.Err() != nil {
			break
		}
		switch k := r.IntN(12); {
		case k < 6: // crash the agent, restart it after a moment
			s.agent.Kill()
			kills++
			sleep(800 * time.Millisecond)
			s.agent.Start()
		case k < 9: // store outage under load
			stopEtcd(t, s, r.IntN(2) == 0)
			etcdStops++
			sleep(2 * time.Second)
			startEtcd(t, s)
		case k < 11: // crash during a store outage; restart before the store
			stopEtcd(t, s, r.IntN(2) == 0)
			sleep(500 * time.Millisecond)
			s.agent.Kill()
			both++
			sleep(500 * time.Millisecond)
			s.agent.Start()
			sleep(time.Second)
			startEtcd(t, s)
		default: // PostgreSQL restart (fast shutdown) under load
			if err := s.pg.Restart(); err != nil {
				t.Fatalf("restart PostgreSQL: %v", err)
			}
			pgRestarts++
		}
		if !s.agent.Running() {
			// It died by itself (recorded as unexpected); keep the test going.
			s.agent.Start()
		}
	}
	wg.Wait()
	t.Logf("faults: %d agent kills, %d etcd outages, %d kills during an outage, %d PostgreSQL restarts", kills, etcdStops, both, pgRestarts)
	t.Logf("workload: %s", w)
	if w.committed.Load() < 50 {
		t.Errorf("only %d transactions committed: the workload did not exercise the agent", w.committed.Load())
	}

	// Everything up: the store must catch up with the database.
	startEtcd(t, s)
	if !s.agent.Running() {
		s.agent.Start()
	}
	start := time.Now()
	d := s.converge(ctx, 90*time.Second)
	t.Logf("converged %v after the last change: %s", time.Since(start).Round(time.Millisecond), d)

	if u := s.agent.Unexpected(); len(u) > 0 {
		t.Errorf("the agent exited without being asked to (it must retry through store outages):\n%v", u)
	}
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
	checkSlotAtCheckpoint(t, ctx, s)
}

// stopEtcd stops etcd cleanly, or kills it (no leader hand-over, as a
// crash looks).
func stopEtcd(t *testing.T, s *stack, kill bool) {
	t.Helper()
	stop := s.etcd.Stop
	if kill {
		stop = s.etcd.Kill
	}
	if err := stop(); err != nil {
		t.Fatalf("stop etcd: %v", err)
	}
}

func startEtcd(t *testing.T, s *stack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.etcd.Start(ctx); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
}
