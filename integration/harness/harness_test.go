package harness_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/harness"
)

var backends = []harness.Backend{harness.Local, harness.Containers}

// TestSideBySide runs two stacks at once on each backend: each has its own
// servers, slot and store, and sees only its own changes.
func TestSideBySide(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			stacks := []*harness.Stack{harness.Start(t, harness.WithBackend(b)), harness.Start(t, harness.WithBackend(b))}
			if stacks[0].DatabaseURL() == stacks[1].DatabaseURL() || stacks[0].KVURL() == stacks[1].KVURL() {
				t.Fatalf("the stacks share a server: %s %s / %s %s", stacks[0].DatabaseURL(), stacks[0].KVURL(), stacks[1].DatabaseURL(), stacks[1].KVURL())
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for i, s := range stacks {
				exec(t, s, fmt.Sprintf("SELECT storage.register_pg_instance('node%d', 5432, 'bagger')", i))
			}
			for i, s := range stacks {
				if err := s.WaitForKey(ctx, fmt.Sprintf("/PostgresInstance/node%d/5432", i), harness.Exists); err != nil {
					t.Fatal(err)
				}
				if err := s.WaitCaughtUp(ctx); err != nil {
					t.Fatal(err)
				}
				other := fmt.Sprintf("/PostgresInstance/node%d/5432", 1-i)
				if _, err := s.Store().Get(ctx, other); err == nil {
					t.Errorf("stack %d has the other stack's key %s", i, other)
				}
				converged(t, s)
			}
		})
	}
}

// TestConfigURL: ConfigURL has lenkwerk_config's privileges and no more,
// even to a test that tries to leave the role it takes (RESET ROLE, SET
// ROLE): the session's own role must not be a superuser.
func TestConfigURL(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			s := harness.Start(t, harness.WithBackend(b))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			conn, err := pgx.Connect(ctx, s.ConfigURL())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			if _, err := conn.Exec(ctx, "SELECT storage.register_pg_instance('db1', 5432, 'bagger')"); err != nil {
				t.Fatalf("register_pg_instance through ConfigURL: %v", err)
			}
			var role string
			if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&role); err != nil || role != "lenkwerk_config" {
				t.Fatalf("current_user %q (%v), want lenkwerk_config", role, err)
			}
			refused := func(sql string) {
				t.Helper()
				_, err := conn.Exec(ctx, sql)
				if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "42501" {
					t.Errorf("%s: %v, want insufficient privilege (42501)", sql, err)
				}
			}
			refused("TRUNCATE storage.config")
			// What a test may try to escape the role: none gains anything.
			// (RESET ROLE returns to the role taken at connection start; the
			// superuser was a SET ROLE away when the URL logged in as one.)
			if _, err := conn.Exec(ctx, "RESET ROLE"); err != nil {
				t.Fatal(err)
			}
			refused("SET ROLE postgres")
			refused("SET SESSION AUTHORIZATION postgres")
			var super string
			if err := conn.QueryRow(ctx, "SELECT current_setting('is_superuser')").Scan(&super); err != nil || super != "off" {
				t.Errorf("is_superuser is %q (%v), want off", super, err)
			}
			refused("CREATE TABLE public.x ()")
			refused("TRUNCATE storage.config")
			// Still a member of lenkwerk_config, and nothing else.
			if _, err := conn.Exec(ctx, "SELECT storage.register_pg_instance('db2', 5432, 'bagger')"); err != nil {
				t.Errorf("register_pg_instance after RESET ROLE: %v", err)
			}
			if err := s.WaitForKey(ctx, "/PostgresInstance/db2/5432", harness.Exists); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// exec runs sql as lenkwerk_config.
func exec(t testing.TB, s *harness.Stack, sql string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := retry(ctx, func() error {
		conn, err := pgx.Connect(ctx, s.ConfigURL())
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	})
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// retry calls f until it succeeds or ctx ends (the database may be
// restarting).
func retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// converged fails t unless the store mirrors the database within a minute
// and WaitCaughtUp agrees.
func converged(t testing.TB, s *harness.Stack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if err := s.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := converge.Wait(ctx, converge.URL(s.DatabaseURL()), s.Store(), converge.Options{Prefix: s.Prefix()}, time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("converged in %v", time.Since(start).Round(time.Millisecond))
}

// changes registers n storage nodes named after tag, in one transaction.
func changes(t testing.TB, s *harness.Stack, tag string, n int) {
	t.Helper()
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "SELECT storage.register_pg_instance('%s-%d', 5432, 'bagger');\n", tag, i)
	}
	exec(t, s, b.String())
}

// TestConcurrentUse waits for a key in one goroutine while the test pulls
// levers and makes the change in another (run it with -race).
func TestConcurrentUse(t *testing.T) {
	s := harness.Start(t, harness.WithBackend(harness.Local), harness.WithPrefix("/bagger"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waited := make(chan error, 1)
	go func() {
		waited <- s.WaitForKey(ctx, "/bagger/PostgresInstance/late-0/5432", harness.Exists)
	}()
	if err := s.KillAgent(ctx); err != nil {
		t.Fatal(err)
	}
	changes(t, s, "late", 1)
	if err := s.RestartAgent(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	converged(t, s)
}

// TestWaitCaughtUp: once WaitCaughtUp returns, every change committed
// before it is in the store, with no waiting; and it returns on an idle
// agent whose checkpoint trails WAL without published changes.
func TestWaitCaughtUp(t *testing.T) {
	s := harness.Start(t, harness.WithBackend(harness.Local))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for i := range 20 { // one transaction each
		if _, err := conn.Exec(ctx, "SELECT storage.register_pg_instance($1, 5432, 'bagger')", fmt.Sprintf("n%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := s.Store().Get(ctx, fmt.Sprintf("/PostgresInstance/n%d/5432", i)); err != nil {
			t.Fatalf("after WaitCaughtUp: %v", err)
		}
	}

	// WAL the agent has no change for: only its idle checkpoint (every
	// few seconds) or the comparison with the database end the wait.
	if _, err := conn.Exec(ctx, "CREATE TABLE public.noise AS SELECT generate_series(1, 1000) AS i"); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	began := time.Now()
	if err := s.WaitCaughtUp(wctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("caught up past unpublished WAL in %v", time.Since(began).Round(time.Millisecond))
}

// TestProcess: with WithAgentStopped nothing runs until the test starts
// the agent; an exit nobody asked for is reported, and a clean stop is not.
// Lenkwerk's own scenarios rely on both to tell a crashed agent.
func TestProcess(t *testing.T) {
	s := harness.Start(t, harness.WithBackend(harness.Local), harness.WithAgentStopped())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if running, err := s.Agent().Running(ctx); err != nil || running {
		t.Fatalf("WithAgentStopped: the agent runs (%v, %v)", running, err)
	}

	// A command that ends by itself: an unexpected exit.
	p, err := s.Command("version", "version")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := retry(ctx, func() error {
		if exits := p.UnexpectedExits(ctx); len(exits) != 1 {
			return fmt.Errorf("UnexpectedExits of a command that ended by itself: %q, want one", exits)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	changes(t, s, "before", 2) // for the initial sync
	if err := s.Agent().Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Agent().WaitLog(ctx, "streaming"); err != nil {
		t.Fatal(err)
	}
	changes(t, s, "after", 2)
	converged(t, s)
	code, err := s.Agent().Stop(ctx)
	if err != nil || code != 0 {
		t.Fatalf("SIGTERM: exit code %d (%v), want 0", code, err)
	}
	if exits := s.Agent().UnexpectedExits(ctx); len(exits) != 0 {
		t.Fatalf("a stopped agent counts as an unexpected exit: %q", exits)
	}
	if _, err := s.AddAgent("agent"); err == nil {
		t.Fatal("a second process named agent was accepted")
	}
}
