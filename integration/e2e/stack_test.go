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
	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd"
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv"
	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Names the migrations create by default.
const (
	slotName    = "lw_agent"
	publication = "bagger_lw_storage"
)

// stack is one Lenkwerk deployment: a private PostgreSQL cluster holding
// the migrated Lenkwerk database, a store, and the agent between them.
type stack struct {
	t       *testing.T
	pg      *pgtest.Cluster
	dbName  string
	dbURL   string // superuser: migrations and the test's own writes
	agentDB string // the agent connects as lenkwerk_agent, as deployed
	pool    *pgxpool.Pool

	etcd  *etcdtest.Server // nil unless the store is etcd
	kvURL string
	store kvdriver.Store // the test's own connection to the store

	agent  *agentProc
	prefix string // the agent's --prefix
	// templates are the agent's --key-template overrides, for converge.
	templates map[string]string
}

type storeKind string

const (
	storeEtcd storeKind = "etcd"
	storePGKV storeKind = "pgkv"
)

// newStack starts PostgreSQL, migrates it with `lenkwerk migrate up` and
// starts the store; the agent is created but not started.
func newStack(t *testing.T, kind storeKind) *stack { return newStackPrefix(t, kind, "") }

// newStackPrefix is newStack with the agent's keys under prefix.
func newStackPrefix(t *testing.T, kind storeKind, prefix string) *stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s := &stack{t: t, pg: pgtest.StartCluster(t, pgtest.Options{})}
	s.dbName = "lenkwerk"
	admin, err := pgx.Connect(ctx, s.pg.URL("postgres", ""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE lenkwerk"); err != nil {
		t.Fatal(err)
	}
	if kind == storePGKV {
		if _, err := admin.Exec(ctx, "CREATE DATABASE lenkwerk_kv"); err != nil {
			t.Fatal(err)
		}
	}
	admin.Close(ctx)
	s.dbURL = s.pg.URL(s.dbName, "")
	s.agentDB = s.pg.URL(s.dbName, "lenkwerk_agent")

	if out, err := runLenkwerk(t, ctx, []string{"LENKWERK_DATABASE_URL=" + s.dbURL}, "migrate", "up"); err != nil {
		t.Fatalf("lenkwerk migrate up: %v\n%s", err, out)
	}

	s.pool, err = pgxpool.New(ctx, s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.pool.Close)

	switch kind {
	case storeEtcd:
		s.etcd = etcdtest.New(t)
		s.kvURL = s.etcd.URL()
	case storePGKV:
		s.kvURL = s.pg.URL("lenkwerk_kv", "")
	default:
		t.Fatalf("unknown store %q", kind)
	}
	s.store, err = kvdriver.Open(ctx, s.kvURL)
	if err != nil {
		t.Fatalf("open store %s: %v", kvdriver.Redact(s.kvURL), err)
	}
	t.Cleanup(func() { s.store.Close() })

	s.prefix = prefix
	s.agent = newAgent(t, "--database-url", s.agentDB, "--kv", s.kvURL, "--prefix", prefix)
	return s
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
	err := waitFor(ctx, 30*time.Second, sql, func(ctx context.Context) (bool, error) {
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
	if done := s.agent.exited(); done != nil {
		go func() {
			select {
			case <-done:
				cancel(errors.New("the agent process exited"))
			case <-ctx.Done():
			}
		}()
	}
	d, err := converge.Wait(ctx, converge.URL(s.dbURL), s.store, converge.Options{Prefix: s.prefix, Templates: s.templates}, timeout)
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
	key := s.prefix + "/" + converge.ReservedSegment + "/checkpoint/" + slotName
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
