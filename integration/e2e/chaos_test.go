package e2e

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
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

// chaosDuration is how long writers and faults run against one store:
// LENKWERK_CHAOS_DURATION (a Go duration) or def, which keeps the whole
// package well under its time budget.
func chaosDuration(t *testing.T, def time.Duration) time.Duration {
	if s := os.Getenv("LENKWERK_CHAOS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("LENKWERK_CHAOS_DURATION=%q: %v", s, err)
		}
		return d
	}
	return def
}

// TestChaos is the randomized test of the agent: concurrent writers make
// random changes through Bagger's functions and plain DML (key-moving
// updates, deletes, truncates, large json left unchanged by updates, bulk
// transactions larger than an etcd batch, rollbacks) while the agent
// process is SIGKILLed at random moments and restarted, the store is
// stopped or killed and started, wiped while the agent is down (it must
// resync), and PostgreSQL restarts now and then. Meanwhile a watcher of the
// store checks that no transaction is seen split and no key goes back to
// an older value (see pairs_test.go). Afterwards the store must equal the
// database: every key to_jsonb of its row, no other key. Then SIGTERM must
// exit 0 with the slot confirmed exactly up to the store's checkpoint.
//
// The seed is logged; LENKWERK_CHAOS_SEED=<seed> replays the same choices
// (the interleaving of concurrent writers and the agent still varies).
func TestChaos(t *testing.T) {
	seed := chaosSeed(t)
	t.Logf("chaos seed %d (replay: LENKWERK_CHAOS_SEED=%d)", seed, seed)
	t.Run("etcd", func(t *testing.T) { testChaos(t, storeEtcd, seed, chaosDuration(t, 20*time.Second)) })
	t.Run("pgkv", func(t *testing.T) { testChaos(t, storePGKV, seed, chaosDuration(t, 10*time.Second)) })
}

func testChaos(t *testing.T, kind storeKind, seed uint64, duration time.Duration) {
	ctx := context.Background()
	s := newStack(t, kind)
	pairs := watchPairs(t.Context(), s.store)

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
	var pairTxns int
	wg.Go(func() { pairTxns = writePairs(wctx, s.pool) })

	// Faults: one goroutine, so each fault is logged in order.
	r := rand.New(rand.NewPCG(seed, 1000))
	faults := map[string]int{}
	firstFaults := []int{0, 6, 9, 11, 12} // one of each kind below
	if kind != storeEtcd {
		firstFaults = []int{0, 11, 12}
	}
	r.Shuffle(len(firstFaults), func(i, j int) { firstFaults[i], firstFaults[j] = firstFaults[j], firstFaults[i] })
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
		// Every kind of fault once, in random order, then random ones.
		var k int
		if len(firstFaults) > 0 {
			k, firstFaults = firstFaults[0], firstFaults[1:]
		} else {
			k = r.IntN(14)
		}
		if kind != storeEtcd && k >= 6 && k < 11 {
			// An etcd fault; pgkv's store outage is the PostgreSQL restart.
			k = 12
		}
		switch {
		case k < 6:
			faults["agent SIGKILL, restart"]++
			s.agent.Kill()
			sleep(800 * time.Millisecond)
			s.agent.Start()
		case k < 9:
			faults["etcd outage"]++
			stopEtcd(t, s, r.IntN(2) == 0)
			sleep(2 * time.Second)
			startEtcd(t, s)
		case k < 11:
			faults["agent SIGKILL during etcd outage, restart before etcd"]++
			stopEtcd(t, s, r.IntN(2) == 0)
			sleep(500 * time.Millisecond)
			s.agent.Kill()
			sleep(500 * time.Millisecond)
			s.agent.Start()
			sleep(time.Second)
			startEtcd(t, s)
		case k < 12:
			faults["store wiped while the agent is down (resync)"]++
			s.agent.Kill()
			wipeStore(t, s)
			s.agent.Start()
		default:
			faults["PostgreSQL restart"]++
			s.lever("restart PostgreSQL", s.RestartPostgres)
		}
		if !s.agent.Running() {
			// It died by itself (recorded as unexpected); keep the test going.
			s.agent.Start()
		}
	}
	wg.Wait()
	t.Logf("faults: %v", faults)
	t.Logf("workload: %s\n%d pair transactions committed", w, pairTxns)
	if w.committed.Load() < 50 || pairTxns < 20 {
		t.Errorf("only %d transactions and %d pairs committed: the workload did not exercise the agent", w.committed.Load(), pairTxns)
	}

	// Everything up: the store must catch up with the database.
	if kind == storeEtcd {
		startEtcd(t, s)
	}
	if !s.agent.Running() {
		s.agent.Start()
	}
	start := time.Now()
	d := s.converge(ctx, 90*time.Second)
	t.Logf("converged %v after the last change: %s", time.Since(start).Round(time.Millisecond), d)

	events, violations, watchErrs := pairs.result()
	t.Logf("pair watcher: %d events, %d watch restarts", events, watchErrs)
	if len(violations) > 0 {
		t.Errorf("the store went through states no database state explains:\n%s", strings.Join(violations, "\n"))
	}
	if events < 20 {
		t.Errorf("the pair watcher saw only %d events", events)
	}
	if u := s.agent.Unexpected(); len(u) > 0 {
		t.Errorf("the agent exited without being asked to (it must retry through outages):\n%v", u)
	}
	if code := s.agent.Terminate(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM: exit code %d, want 0", code)
	}
	checkSlotAtCheckpoint(t, ctx, s)
}

// wipeStore deletes every key of the store, the agent's checkpoint
// included, as a new or lost store would be.
func wipeStore(t *testing.T, s *stack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kvs, _, err := s.store.List(ctx, "/")
	if err != nil {
		t.Fatalf("wipe store: %v", err)
	}
	per := s.store.Limits().MaxBatchOps
	if per <= 0 || per > 100 {
		per = 100
	}
	for len(kvs) > 0 {
		n := min(per, len(kvs))
		ops := make([]kvdriver.Op, n)
		for i, kv := range kvs[:n] {
			ops[i] = kvdriver.Delete(kv.Key)
		}
		if _, err := s.store.Apply(ctx, ops); err != nil {
			t.Fatalf("wipe store: %v", err)
		}
		kvs = kvs[n:]
	}
}

// stopEtcd stops etcd cleanly, or kills it (no leader hand-over, as a
// crash looks).
func stopEtcd(t *testing.T, s *stack, kill bool) {
	t.Helper()
	if kill {
		s.lever("kill etcd", s.KillStore)
	} else {
		s.lever("stop etcd", s.StopStore)
	}
}

func startEtcd(t *testing.T, s *stack) {
	t.Helper()
	s.lever("start etcd", s.StartStore)
}
