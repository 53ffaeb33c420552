package containers_test

import (
	"context"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/testutil"
)

// underLoad runs fault while a writer changes the database, with a few
// seconds of load before and after it, then stops the writer and waits
// for convergence.
func (s *stack) underLoad(ctx context.Context, seed uint64, converge time.Duration, fault func()) {
	s.t.Helper()
	l := startLoad(s.t, s, seed)
	pause(3 * time.Second)
	fault()
	l.finish(s.t)
	s.converge(ctx, converge)
}

// faultUnderLoad is a fault scenario: on a stack with an etcd of members
// members (0: pgkv) and the agent streaming, fault hits under a load of
// seed; afterwards the store converges, the agent still runs (it rides
// out every fault here) and it applied no transaction twice.
func faultUnderLoad(t *testing.T, members int, seed uint64, fault func(ctx context.Context, s *stack)) {
	t.Helper()
	ctx := context.Background()
	s := newStack(t, members)
	s.startAgent()
	s.converge(ctx, 60*time.Second)
	s.underLoad(ctx, seed, 90*time.Second, func() { fault(ctx, s) })
	s.agentRunning(ctx)
	s.checkNoReplay(ctx)
}

// Scenario 2: the agent container SIGKILLed mid-load and started again:
// nothing lost (convergence) and nothing applied twice (the checkpoint
// history).
func TestAgentKilled(t *testing.T) {
	t.Parallel()
	faultUnderLoad(t, 1, 2, func(ctx context.Context, s *stack) {
		s.must(s.KillAgent(ctx))
		pause(2 * time.Second) // changes pile up in the slot meanwhile
		s.must(s.Agent().Start(ctx))
	})
}

// Scenario 3: etcd stopped for 30 s under load, then started: the agent
// backs off without exiting and catches up.
func TestEtcdDown30s(t *testing.T) {
	t.Parallel()
	faultUnderLoad(t, 1, 3, func(ctx context.Context, s *stack) {
		s.must(s.StopStore(ctx))
		pause(30 * time.Second)
		s.must(s.StartStore(ctx))
	})
}

// Scenario 4: a three-member etcd cluster loses the member the agent
// lists first, under load: a change made while it is down reaches the
// store within a few seconds, and after it is back everything is there.
func TestEtcdMemberDown(t *testing.T) {
	t.Parallel()
	faultUnderLoad(t, 3, 4, func(ctx context.Context, s *stack) {
		s.must(s.StopNode(ctx, 0))
		// The marker goes through the agent to the two members left.
		store := s.Store()
		start := time.Now()
		s.exec(ctx, `SELECT storage.save_config('marker', '"member down"')`)
		err := testutil.Poll(ctx, 10*time.Second, "the marker", func(ctx context.Context) (bool, error) {
			kv, err := store.Get(ctx, "/Config/marker")
			return err == nil && len(kv.Value) > 0, err
		})
		if err != nil {
			t.Fatalf("with one of three etcd members down, a change did not reach the store within 10s: %v", err)
		}
		t.Logf("with a member down, a change reached the store in %v", time.Since(start).Round(time.Millisecond))
		pause(3 * time.Second)
		s.must(s.StartNode(ctx, 0))
	})
}

// Scenario 5: the agent container cut off from PostgreSQL alone (it
// still reaches etcd) for 15 s, then off the network altogether (from
// PostgreSQL and etcd) for 20 s — each longer than the server's
// wal_sender_timeout (10 s) — and put back each time: it reconnects and
// resumes. Its address may change, as a moved container's would.
func TestAgentPartitioned(t *testing.T) {
	t.Parallel()
	faultUnderLoad(t, 1, 5, func(ctx context.Context, s *stack) {
		s.must(s.PartitionAgentFromDB(ctx))
		pause(15 * time.Second)
		s.must(s.Heal(ctx))
		pause(3 * time.Second)
		s.must(s.PartitionAgent(ctx))
		pause(20 * time.Second)
		s.must(s.Heal(ctx))
	})
}

// Scenario 6: PostgreSQL restarted under load, twice: stopped (a fast
// shutdown) and started, then killed (crash recovery) and started. The
// writer and the checks follow it to its new host port.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	faultUnderLoad(t, 1, 6, func(ctx context.Context, s *stack) {
		s.must(s.RestartPostgres(ctx))
		pause(3 * time.Second)
		s.must(s.KillPostgres(ctx))
		s.must(s.StartPostgres(ctx))
	})
}
