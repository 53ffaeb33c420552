package containers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/containers"
	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd"
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv"
)

// kvDatabase is the database the pgkv store lives in, next to Lenkwerk's.
const kvDatabase = "lenkwerk_kv"

// stack is one deployment: its own network, PostgreSQL migrated by the
// migrate job, a store (etcd with members members, or pgkv when 0) and an
// agent container, created but started by startAgent.
type stack struct {
	t     *testing.T
	img   containers.Images
	nw    *containers.Network
	pg    *containers.Postgres
	etcd  *containers.Etcd // nil with pgkv
	agent *containers.Container
	// kvInternal is the store URL containers use.
	kvInternal string
}

func newStack(t *testing.T, members int) *stack {
	t.Helper()
	s := &stack{t: t, img: containers.EnsureImages(t)}
	s.nw = containers.NewNetwork(t)
	s.pg = containers.StartPostgres(t, s.nw, s.img)
	if out, err := containers.RunLenkwerk(t, s.nw, s.img, "migrate", "migrate", "up",
		"--database-url", s.pg.InternalURL(containers.DefaultDatabase, "")); err != nil {
		t.Fatalf("migrate job: %v\n%s", err, out)
	}
	if members > 0 {
		s.etcd = containers.StartEtcd(t, s.nw, s.img, members)
		s.kvInternal = s.etcd.InternalURL()
	} else {
		if err := s.pg.Exec(context.Background(), "postgres", "CREATE DATABASE "+kvDatabase); err != nil {
			t.Fatal(err)
		}
		s.kvInternal = s.pg.InternalURL(kvDatabase, "")
	}
	return s
}

// startAgent starts the agent container, connecting as lenkwerk_agent as
// deployed.
func (s *stack) startAgent() {
	s.t.Helper()
	s.agent = containers.StartLenkwerk(s.t, s.nw, s.img, "agent", "agent",
		"--database-url", s.pg.InternalURL(containers.DefaultDatabase, "lenkwerk_agent"),
		"--kv", s.kvInternal)
}

// dbURL is the host's URL of the Lenkwerk database as the superuser.
func (s *stack) dbURL(ctx context.Context) string {
	s.t.Helper()
	u, err := s.pg.URL(ctx, containers.DefaultDatabase, "")
	if err != nil {
		s.t.Fatal(err)
	}
	return u
}

// openStore opens the store from the host, on the current host ports.
func (s *stack) openStore(ctx context.Context) kvdriver.Store {
	s.t.Helper()
	var u string
	var err error
	if s.etcd != nil {
		u, err = s.etcd.URL(ctx)
	} else {
		u, err = s.pg.URL(ctx, kvDatabase, "")
	}
	if err != nil {
		s.t.Fatal(err)
	}
	store, err := kvdriver.Open(ctx, u)
	if err != nil {
		s.t.Fatalf("open store %s: %v", kvdriver.Redact(u), err)
	}
	s.t.Cleanup(func() { store.Close() })
	return store
}

// exec runs SQL in the Lenkwerk database as the superuser.
func (s *stack) exec(ctx context.Context, sql string) {
	s.t.Helper()
	if err := s.pg.Exec(ctx, containers.DefaultDatabase, sql); err != nil {
		s.t.Fatal(err)
	}
}

// converge waits until the store mirrors the database, at most timeout.
func (s *stack) converge(ctx context.Context, timeout time.Duration) {
	s.t.Helper()
	start := time.Now()
	store := s.openStore(ctx)
	if _, err := converge.Wait(ctx, converge.URL(s.dbURL(ctx)), store, converge.Options{}, timeout); err != nil {
		s.t.Fatal(err)
	}
	s.t.Logf("converged in %v", time.Since(start).Round(time.Millisecond))
}

// agentRunning fails the test when the agent container exited: every
// fault here is one the agent is to ride out, not die of.
func (s *stack) agentRunning(ctx context.Context) {
	s.t.Helper()
	running, err := s.agent.Running(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	if !running {
		code, _ := s.agent.ExitCode(ctx)
		s.t.Fatalf("the agent container exited (code %d) instead of riding out the fault", code)
	}
}

// agentLogCount counts the agent's log lines containing substr.
func (s *stack) agentLogCount(ctx context.Context, substr string) int {
	b, err := s.agent.Logs(ctx)
	if err != nil {
		s.t.Fatal(err)
	}
	return strings.Count(string(b), substr)
}

// pause lets a fault last: the point is the elapsed time, not a
// condition.
func pause(d time.Duration) { time.Sleep(d) }
