package harness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/containers"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd" // etcd:// store URLs
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv" // postgres:// store URLs
)

// Database is the name of the Lenkwerk database every Stack creates.
const Database = "lenkwerk"

// ErrUnsupported is returned by a fault lever the Stack's backend or store
// cannot pull (e.g. PartitionAgentFromDB or KillPostgres on the local
// backend, StopNode with PGKV). It wraps errors.ErrUnsupported.
var ErrUnsupported = fmt.Errorf("harness: %w", errors.ErrUnsupported)

// logTail is how much of the end of a lenkwerk process's output a failed
// test shows.
const logTail = 64 << 10

// startTimeout bounds Start: servers, migrations and the agent's initial
// sync. Building the images comes before it and is not counted.
const startTimeout = 3 * time.Minute

// backend is what a Backend runs. Its methods other than newProc's
// processes are called one at a time, under Stack.levers.
type backend interface {
	// urls returns the host's admin URL of the Lenkwerk database and the
	// store URL, read afresh (container host ports change on restart);
	// "" for a server that does not run.
	urls(ctx context.Context) (admin, kv string, err error)
	// agentDB and agentKV are the URLs lenkwerk processes of the backend
	// use: the Lenkwerk database as lenkwerk_agent, and the store.
	agentDB() string
	agentKV() string
	// newProc creates, without starting it, a lenkwerk process named name
	// running args.
	newProc(name string, args []string) (proc, error)
	// run runs a lenkwerk command to its end.
	run(ctx context.Context, name string, args []string) (string, error)
	stopStore(ctx context.Context) error
	killStore(ctx context.Context) error
	startStore(ctx context.Context) error
	stopNode(ctx context.Context, i int) error
	startNode(ctx context.Context, i int) error
	stopPostgres(ctx context.Context) error
	killPostgres(ctx context.Context) error
	startPostgres(ctx context.Context) error
	partition(ctx context.Context, agent proc) error
	isolate(ctx context.Context, agent proc) error
	heal(ctx context.Context, agent proc) error
	// movesPorts reports whether restarted servers get new host ports,
	// so the Stack's store must be opened again.
	movesPorts() bool
}

// Stack is a running Lenkwerk: PostgreSQL with the Lenkwerk database
// migrated, a key-value store and the agent mirroring one into the other.
// Start returns it; the test's Cleanup tears it down. Its methods are safe
// for concurrent use.
type Stack struct {
	tb      testing.TB
	cfg     config
	backend Backend

	// levers serializes the backend's methods (fault levers); mu guards
	// the fields below, so URLs, the store and the processes are at hand
	// while a lever takes its time.
	levers sync.Mutex
	b      backend

	mu    sync.Mutex
	admin string          // current admin URL
	kvURL string          // current store URL
	store *kvdriver.Store // opened on kvURL
	agent *Process
	procs []*Process // every process, the agent first
}

// Start brings up a Stack for tb and registers its teardown with
// tb.Cleanup. It fails tb (Fatal) when something does not come up; it
// returns once the agent has copied the (fresh) database into the store and
// streams changes — or, with WithAgentStopped, once PostgreSQL and the
// store serve, before the agent's first start.
//
// Without WithBackend or LENKWERK_HARNESS_BACKEND it uses the containers
// backend when a Docker engine answers, else the local one.
func Start(tb testing.TB, opts ...Option) *Stack {
	tb.Helper()
	cfg, err := newConfig(opts)
	if err != nil {
		tb.Fatal(err)
	}
	if cfg.backend == "" {
		cfg.backend = Local
		if dockerAnswers(context.Background()) {
			cfg.backend = Containers
		}
	}
	if err := cfg.validate(); err != nil {
		tb.Fatal(err)
	}
	var img containers.Images
	if cfg.backend == Containers {
		// Before the clock starts: building cold images takes minutes on a
		// busy machine (and parallel tests wait for the one build), and
		// startTimeout is for bringing up the stack, not for the build.
		img = containers.EnsureImages(tb)
	}
	var bin string
	if cfg.backend == Local {
		// Before the clock starts too, for the same reason: a cold build of
		// the lenkwerk command alone has taken minutes under load.
		began := time.Now()
		if bin, err = lenkwerkBinary(context.Background()); err != nil {
			tb.Fatalf("harness: %v", err)
		}
		tb.Logf("harness: lenkwerk binary %s (%v)", bin, time.Since(began).Round(10*time.Millisecond))
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	began := time.Now()
	s := &Stack{tb: tb, cfg: cfg, backend: cfg.backend}
	switch cfg.backend {
	case Local:
		s.b, err = startLocal(ctx, tb, cfg, bin)
	case Containers:
		if cfg.patroni {
			s.b, err = startPatroni(ctx, tb, cfg, img)
		} else {
			s.b, err = startContainers(ctx, tb, cfg, img)
		}
	}
	if err != nil {
		tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
	}
	// Registered after the backend's own: runs first, before the servers
	// go away.
	tb.Cleanup(s.teardown)
	if err := s.refresh(ctx); err != nil {
		tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
	}
	if err := createConfigLogin(ctx, s.DatabaseURL()); err != nil {
		tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
	}
	if s.agent, err = s.newProcess("agent", s.agentCommand("agent")); err != nil {
		tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
	}
	if !cfg.agentStopped {
		if err := s.agent.Start(ctx); err != nil {
			tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
		}
		if err := s.waitAgentReady(ctx); err != nil {
			tb.Fatalf("harness (%s backend): %v", cfg.backend, err)
		}
	}
	tb.Logf("harness: %s backend, store %s: up in %v", cfg.backend, cfg.kv, time.Since(began).Round(10*time.Millisecond))
	return s
}

// waitAgentReady waits for the agent's first checkpoint: written at the end
// of its initial sync, it says the store holds the database and the agent
// streams.
func (s *Stack) waitAgentReady(ctx context.Context) error {
	err := poll(ctx, 50*time.Millisecond, func() (bool, error) {
		_, ok, err := agent.ReadCheckpoint(ctx, s.Store(), s.cfg.prefix, agent.DefaultSlot)
		if ok || err != nil {
			return ok, err
		}
		running, err := s.agent.Running(ctx)
		if err == nil && !running {
			return false, errors.New("the agent exited")
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the agent's initial sync: %w\n%s", err, s.agent.tail(logTail))
	}
	return nil
}

// poll calls cond until it returns true or an error, or ctx ends.
func poll(ctx context.Context, every time.Duration, cond func() (bool, error)) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
