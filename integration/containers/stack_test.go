package containers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/harness"
)

// stack is one deployment of the harness on the containers backend:
// networks of its own, PostgreSQL migrated by the migrate job, a store
// (etcd with members members, or pgkv in the Lenkwerk database when 0) and
// an agent container, created but started by startAgent.
type stack struct {
	*harness.Stack
	t *testing.T
}

func newStack(t *testing.T, members int, opts ...harness.Option) *stack {
	t.Helper()
	kv := harness.PGKV
	switch members {
	case 0:
	case 1:
		kv = harness.Etcd
	case 3:
		kv = harness.EtcdCluster
	default:
		t.Fatalf("an etcd cluster of %d members: the harness runs 1 or 3", members)
	}
	return &stack{t: t, Stack: harness.Start(t, append([]harness.Option{
		harness.WithBackend(harness.Containers),
		harness.WithKV(kv),
		harness.WithAgentStopped(),
		harness.WithMigrateCommand(),
	}, opts...)...)}
}

// startAgent starts the agent container, connecting as lenkwerk_agent as
// deployed.
func (s *stack) startAgent() {
	s.t.Helper()
	if err := s.Agent().Start(context.Background()); err != nil {
		s.t.Fatal(err)
	}
}

// exec runs SQL in the Lenkwerk database as the superuser.
func (s *stack) exec(ctx context.Context, sql string) {
	s.t.Helper()
	conn, err := pgx.Connect(ctx, s.DatabaseURL())
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
}

// must pulls a lever (or anything else that may fail), failing the test
// on an error.
func (s *stack) must(err error) {
	s.t.Helper()
	if err != nil {
		s.t.Fatal(err)
	}
}

// converge waits until the store mirrors the database, at most timeout.
func (s *stack) converge(ctx context.Context, timeout time.Duration) {
	s.t.Helper()
	start := time.Now()
	if _, err := converge.Wait(ctx, converge.URL(s.DatabaseURL()), s.Store(), converge.Options{}, timeout); err != nil {
		s.t.Fatal(err)
	}
	s.t.Logf("converged in %v", time.Since(start).Round(time.Millisecond))
}

// agentRunning fails the test when the agent container exited: every
// fault here is one the agent is to ride out, not die of.
func (s *stack) agentRunning(ctx context.Context) {
	s.t.Helper()
	running, err := s.Agent().Running(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	if !running {
		// Each exit with its code (and signal): an OOM kill or a crash
		// reads differently from a clean exit.
		s.t.Fatalf("the agent container exited instead of riding out the fault: %s", strings.Join(s.Agent().UnexpectedExits(ctx), "; "))
	}
}

// agentLogCount counts the agent's log lines containing substr.
func (s *stack) agentLogCount(ctx context.Context, substr string) int {
	b, err := s.Agent().Log(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return strings.Count(string(b), substr)
}

// pause lets a fault last: the point is the elapsed time, not a
// condition.
func pause(d time.Duration) { time.Sleep(d) }
