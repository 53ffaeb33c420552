package containers_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// An op is one configuration change: a call of Bagger's functions or DML
// an operator might run. Values stay small (a container log line is at
// most 16 KiB, and scenario 8 reads the watcher's log).
type op struct {
	name string
	sql  func(r *rand.Rand) (string, []any)
}

var (
	hosts      = []string{"db1", "db2", "db3", "10.0.0.4", "rack/5"}
	configKeys = []string{"kvstore_type", "retention", "a/b", "100%", "k1", "k2", "k3"}
	fieldNames = []string{"day", "customer", "region", "source"}
)

const (
	randomInstance  = `(SELECT id FROM storage.postgres_instance ORDER BY random() LIMIT 1)`
	randomDimension = `(SELECT id FROM storage.dimension ORDER BY random() LIMIT 1)`
	randomIndex     = `(SELECT id FROM storage.index ORDER BY random() LIMIT 1)`
	randomField     = `(SELECT id FROM storage.index_field ORDER BY random() LIMIT 1)`
)

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

// ops, repeated by weight.
var ops = weighted(map[int][]op{
	6: {
		{"register_pg_instance", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.register_pg_instance($1, $2, 'bagger')`, []any{pick(r, hosts), 5432 + r.IntN(3)}
		}},
		{"set_pg_instance_status", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.set_pg_instance_status(` + randomInstance + `, $1)`, []any{r.IntN(4)}
		}},
		{"save_config", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.save_config($1, $2::json)`, []any{pick(r, configKeys), fmt.Sprintf(`{"v": %d, "s": "x\u00fc"}`, r.IntN(1e6))}
		}},
	},
	3: {
		{"save_servermap", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.save_servermap(json_build_object('nodes', (SELECT coalesce(json_agg(id ORDER BY id), '[]') FROM storage.postgres_instance WHERE status = 3), 'rotate', storage.servermap_rotate_num()))`, nil
		}},
		{"append_dimension", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.append_dimension($1, NULL, NULL, NULL)`, []any{pick(r, fieldNames)}
		}},
		{"save_index", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.save_index($1, $2, NULL, NULL, NULL)`, []any{pick(r, []string{"bagger_idx", "ts_idx"}), pick(r, []string{"btree", "gin"})}
		}},
		{"append_index_field", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.append_index_field(` + randomIndex + `, $1, NULL, NULL)`, []any{pick(r, []string{"ts", "host", "lower(msg)"})}
		}},
		{"move instance port", func(r *rand.Rand) (string, []any) {
			return `UPDATE storage.postgres_instance SET port = $1 WHERE id = ` + randomInstance, []any{5432 + r.IntN(3)}
		}},
	},
	1: {
		{"expire_dimension", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.expire_dimension(` + randomDimension + `, localtimestamp(6))`, nil
		}},
		{"expire_index_field", func(r *rand.Rand) (string, []any) {
			return `SELECT storage.expire_index_field(` + randomField + `, localtimestamp(6))`, nil
		}},
		{"delete instance", func(r *rand.Rand) (string, []any) {
			return `DELETE FROM storage.postgres_instance WHERE id = ` + randomInstance, nil
		}},
		{"delete config", func(r *rand.Rand) (string, []any) {
			return `DELETE FROM storage.config WHERE key = $1`, []any{pick(r, configKeys)}
		}},
		{"bulk config", func(r *rand.Rand) (string, []any) {
			// More rows in one transaction than an etcd Txn takes.
			return `INSERT INTO storage.config (key, value) SELECT 'bulk/' || g, json_build_object('g', g, 'r', $1::int) FROM generate_series(1, 200) g
				ON CONFLICT (key) DO UPDATE SET value = excluded.value`, []any{r.IntN(1000)}
		}},
		{"bulk delete", func(r *rand.Rand) (string, []any) {
			return `DELETE FROM storage.config WHERE key LIKE 'bulk/%'`, nil
		}},
	},
})

func weighted(m map[int][]op) []op {
	var all []op
	for w, os := range m {
		for range w {
			all = append(all, os...)
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].name < all[j].name })
	return all
}

// load writes random transactions into a stack's database from the host
// until stopped, reconnecting (on the current host port) across restarts
// and partitions.
type load struct {
	committed, failed atomic.Int64
	mu                sync.Mutex
	errs              map[string]int
	cancel            context.CancelFunc
	done              chan struct{}
}

// startLoad starts one writer; the returned load's stop ends it.
func startLoad(t *testing.T, s *stack, seed uint64) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{errs: map[string]int{}, cancel: cancel, done: make(chan struct{})}
	t.Cleanup(func() { l.stop() })
	r := rand.New(rand.NewPCG(seed, 7))
	go func() {
		defer close(l.done)
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for ctx.Err() == nil {
			if conn == nil {
				c, err := connect(ctx, s.DatabaseURL())
				if err != nil {
					l.note(ctx, "connect", err)
					continue
				}
				conn = c
			}
			err := l.transaction(ctx, conn, r)
			if err != nil {
				l.note(ctx, "transaction", err)
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || conn.IsClosed() {
					conn.Close(context.Background())
					conn = nil
				}
				continue
			}
			l.committed.Add(1)
			// About 50 transactions a second: load, not a benchmark, on
			// a machine the scenarios share.
			sleep(ctx, 20*time.Millisecond)
		}
	}()
	return l
}

// connect connects to url, the current one: PostgreSQL's host port moves
// when it restarts.
func connect(ctx context.Context, u string) (*pgx.Conn, error) {
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return pgx.Connect(cctx, u)
}

func (l *load) transaction(ctx context.Context, conn *pgx.Conn, r *rand.Rand) error {
	// A partition leaves a query hanging: bound each transaction.
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background())
	for range 1 + r.IntN(3) {
		o := pick(r, ops)
		sql, args := o.sql(r)
		if _, err := tx.Exec(ctx, sql, args...); err != nil {
			return fmt.Errorf("%s: %w", o.name, err)
		}
	}
	return tx.Commit(ctx)
}

func (l *load) note(ctx context.Context, what string, err error) {
	if ctx.Err() != nil {
		return
	}
	l.failed.Add(1)
	kind := err.Error()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		op, _, _ := strings.Cut(err.Error(), ":")
		kind = op + ": " + pgErr.Code
	} else if len(kind) > 60 {
		kind = kind[:60]
	}
	l.mu.Lock()
	l.errs[what+": "+kind]++
	l.mu.Unlock()
	if !errors.As(err, &pgErr) {
		// The server is away: don't spin.
		sleep(ctx, 100*time.Millisecond)
	}
}

// finish lets the writer run a moment longer (changes after the fault),
// stops it and fails the test if it committed nothing.
func (l *load) finish(t testing.TB) {
	t.Helper()
	pause(3 * time.Second)
	l.stop()
	t.Logf("load: %v", l)
	if l.committed.Load() == 0 {
		t.Fatal("the writer committed nothing: the scenario tested nothing")
	}
}

// stop ends the writer and waits for it.
func (l *load) stop() {
	l.cancel()
	<-l.done
}

func (l *load) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	kinds := make([]string, 0, len(l.errs))
	for k, n := range l.errs {
		kinds = append(kinds, fmt.Sprintf("%d× %s", n, k))
	}
	sort.Strings(kinds)
	if len(kinds) > 8 {
		kinds = append(kinds[:8], "…")
	}
	return fmt.Sprintf("%d transactions committed, %d failed %v", l.committed.Load(), l.failed.Load(), kinds)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
