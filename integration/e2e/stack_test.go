package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/harness"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Names the migrations create by default.
const (
	slotName    = "lw_agent"
	publication = "bagger_lw_storage"
)

// stack is one Lenkwerk deployment of the harness (local backend: a
// private PostgreSQL cluster migrated with `lenkwerk migrate up`, a store,
// the lenkwerk agent as a child process), with the helpers the scenarios
// share. The agent is created but not started.
type stack struct {
	*harness.Stack
	t     *testing.T
	pool  *pgxpool.Pool   // superuser: the test's own writes
	store *kvdriver.Store // local backend: one store for the stack's life
	agent *agentProc
}

type storeKind = harness.KV

const (
	storeEtcd = harness.Etcd
	storePGKV = harness.PGKV
)

// newStack starts PostgreSQL, migrates it with `lenkwerk migrate up` and
// starts the store; the agent is created but not started.
func newStack(t *testing.T, kind storeKind, opts ...harness.Option) *stack {
	t.Helper()
	hs := harness.Start(t, append([]harness.Option{
		harness.WithBackend(harness.Local),
		harness.WithKV(kind),
		harness.WithAgentStopped(),
		harness.WithMigrateCommand(),
	}, opts...)...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, hs.DatabaseURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := &stack{Stack: hs, t: t, pool: pool, store: hs.Store()}
	s.agent = s.watchAgent(hs.Agent())
	return s
}

// addAgent creates a second agent on the stack's slot and store, not
// started.
func (s *stack) addAgent(name string) *agentProc {
	s.t.Helper()
	p, err := s.AddAgent(name)
	if err != nil {
		s.t.Fatal(err)
	}
	return s.watchAgent(p)
}

// watchAgent fails the test when the race detector (LENKWERK_E2E_BUILDFLAGS=-race)
// reported a data race in the agent's output.
func (s *stack) watchAgent(p *harness.Process) *agentProc {
	a := &agentProc{Process: p, t: s.t}
	s.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if out, err := p.Log(ctx); err == nil && strings.Contains(string(out), "WARNING: DATA RACE") {
			s.t.Errorf("the race detector reported a data race in %s", p.Name())
		}
	})
	return a
}

// exec runs SQL as the superuser.
func (s *stack) exec(ctx context.Context, sql string, args ...any) {
	s.t.Helper()
	if _, err := s.pool.Exec(ctx, sql, args...); err != nil {
		s.t.Fatalf("%s: %v", sql, err)
	}
}

// execRetry is exec for right after a PostgreSQL restart: the pool's old
// connections fail once, and the server may still be starting.
func (s *stack) execRetry(ctx context.Context, sql string, args ...any) {
	s.t.Helper()
	err := testutil.Poll(ctx, 30*time.Second, sql, func(ctx context.Context) (bool, error) {
		_, err := s.pool.Exec(ctx, sql, args...)
		return err == nil, err
	})
	if err != nil {
		s.t.Fatal(err)
	}
}

// tryConverge waits until the store mirrors the database. It gives up at
// once if the agent process ends: it would wait for nothing.
func (s *stack) tryConverge(ctx context.Context, timeout time.Duration) (converge.Diff, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if s.agent.Running() {
		go func() {
			for ctx.Err() == nil {
				if running, err := s.agent.Process.Running(ctx); err == nil && !running {
					cancel(errors.New("the agent process exited"))
					return
				}
				sleepCtx(ctx, 100*time.Millisecond)
			}
		}()
	}
	d, err := converge.Wait(ctx, converge.URL(s.DatabaseURL()), s.store, converge.Options{Prefix: s.Prefix(), Templates: s.KeyTemplates()}, timeout)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = fmt.Errorf("%w (%v)", err, cause)
	}
	return d, err
}

// converge waits until the store mirrors the database, or fails the test.
func (s *stack) converge(ctx context.Context, timeout time.Duration) converge.Diff {
	s.t.Helper()
	d, err := s.tryConverge(ctx, timeout)
	if err != nil {
		s.t.Fatalf("store does not mirror the database: %v", err)
	}
	return d
}

// checkpoint reads the agent's checkpoint LSN from the store.
func (s *stack) checkpoint(ctx context.Context) (pglogrepl.LSN, error) {
	key := s.Prefix() + "/" + converge.ReservedSegment + "/checkpoint/" + slotName
	kv, err := s.store.Get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("get %s: %w", key, err)
	}
	var c struct {
		LSN string `json:"lsn"`
	}
	if err := json.Unmarshal(kv.Value, &c); err != nil {
		return 0, fmt.Errorf("checkpoint %s = %s: %w", key, kv.Value, err)
	}
	lsn, err := pglogrepl.ParseLSN(c.LSN)
	if err != nil {
		return 0, fmt.Errorf("checkpoint %s = %s: %w", key, kv.Value, err)
	}
	return lsn, nil
}

// slot returns the slot's confirmed_flush_lsn and whether a walsender holds it.
func (s *stack) slot(ctx context.Context) (confirmed pglogrepl.LSN, active bool, err error) {
	var lsn *string
	err = s.pool.QueryRow(ctx, `SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots WHERE slot_name = $1`, slotName).Scan(&lsn, &active)
	if err != nil {
		return 0, false, fmt.Errorf("read slot %s: %w", slotName, err)
	}
	if lsn == nil {
		return 0, active, nil
	}
	confirmed, err = pglogrepl.ParseLSN(*lsn)
	return confirmed, active, err
}

// lever pulls a fault lever of the harness, or fails the test.
func (s *stack) lever(what string, f func(context.Context) error) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := f(ctx); err != nil {
		s.t.Fatalf("%s: %v", what, err)
	}
}

// configStep is one step of the happy path's sequence of configuration
// changes: SQL run as the superuser, as an operator would.
type configStep struct {
	what string
	sql  string
}

// keysUnder lists the store's keys under prefix, for messages.
func (s *stack) keysUnder(ctx context.Context, prefix string) string {
	kvs, _, err := s.store.List(ctx, prefix)
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, kv := range kvs {
		fmt.Fprintf(&b, "%s = %s\n", kv.Key, kv.Value)
	}
	return b.String()
}
