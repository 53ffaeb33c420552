package e2e

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// An op is one random change to the Lenkwerk database: a call of one of
// Bagger's configuration functions or plain DML an operator might run.
type op struct {
	name   string
	weight int
	sql    func(r *rand.Rand) (string, []any)
}

// Small value pools make changes collide: the same keys are inserted,
// moved, deleted and truncated again and again. A host with '/' and '%'
// checks key escaping.
var (
	hosts      = []string{"db1", "db2", "db3", "10.0.0.4", "node/5", "n%6"}
	configKeys = []string{"kvstore_type", "kvstore_config", "retention", "a/b", "100%", "k1", "k2", "k3", "big1", "big2", "big3"}
	fieldNames = []string{"day", "customer", "region", "source", "host", "level"}
	indexNames = []string{"bagger_idx", "ts_idx", "msg_gin", "host_hash"}
	methods    = []string{"btree", "gin", "gist", "hash"}
	exprs      = []string{"ts", "host", "(payload->>'level')", "lower(msg)", "customer_id"}
)

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

// bigJSON returns a JSON document of about n bytes that does not compress,
// so PostgreSQL stores it out of line (TOAST) and pgoutput sends unchanged
// copies of it as "unchanged TOAST".
func bigJSON(r *rand.Rand, n int) string {
	b := make([]byte, n/2)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return fmt.Sprintf(`{"blob": "%s", "n": %d, "nested": {"list": [1, 2.5, "x\"y", null, true]}}`, hex.EncodeToString(b), r.IntN(1000))
}

func smallJSON(r *rand.Rand) string {
	switch r.IntN(6) {
	case 0:
		return fmt.Sprintf(`%d`, r.IntN(100000))
	case 1:
		return fmt.Sprintf(`"s%d \u00fc\\n"`, r.IntN(100))
	case 2:
		return `null`
	case 3:
		return fmt.Sprintf(`[%d, {"a": %d}, "x"]`, r.IntN(9), r.IntN(9))
	case 4:
		return fmt.Sprintf(`{"host": "%s", "port": %d, "z": 1.50, "a": [ ]}`, pick(r, hosts), 2379+r.IntN(3))
	}
	return `{"b": true, "a": {"c": 1e3}}`
}

// randomInstance, randomConfig… select an existing row's id (NULL when the
// table is empty; the function then fails or does nothing, both fine).
const (
	randomInstance  = `(SELECT id FROM storage.postgres_instance ORDER BY random() LIMIT 1)`
	randomDimension = `(SELECT id FROM storage.dimension ORDER BY random() LIMIT 1)`
	randomIndex     = `(SELECT id FROM storage.index ORDER BY random() LIMIT 1)`
	randomField     = `(SELECT id FROM storage.index_field ORDER BY random() LIMIT 1)`
	randomConfigKey = `(SELECT key FROM storage.config ORDER BY random() LIMIT 1)`
	randomValidity  = `CASE WHEN random() < 0.5 THEN NULL ELSE localtimestamp(3) + interval '1 day' END`
)

var ops = []op{
	// Bagger's functions.
	{"register_pg_instance", 8, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.register_pg_instance($1, $2, $3)`, []any{pick(r, hosts), 5432 + r.IntN(3), pick(r, []string{"bagger", "schaufel"})}
	}},
	{"set_pg_instance_status", 8, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.set_pg_instance_status(` + randomInstance + `, $1)`, []any{r.IntN(4)}
	}},
	{"save_config", 10, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.save_config($1, $2::json)`, []any{pick(r, configKeys[:8]), smallJSON(r)}
	}},
	{"save_config big", 4, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.save_config($1, $2::json)`, []any{pick(r, configKeys[8:]), bigJSON(r, 3000+r.IntN(6000))}
	}},
	{"save_servermap", 5, func(r *rand.Rand) (string, []any) {
		if r.IntN(3) == 0 {
			return `SELECT storage.save_servermap($1::json)`, []any{bigJSON(r, 4000)}
		}
		return `SELECT storage.save_servermap(json_build_object('nodes', (SELECT coalesce(json_agg(id ORDER BY id), '[]') FROM storage.postgres_instance WHERE status = 3), 'rotate', storage.servermap_rotate_num()))`, nil
	}},
	{"append_dimension", 4, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.append_dimension($1, $2, NULL, ` + randomValidity + `)`, []any{pick(r, fieldNames), pick(r, []any{nil, "none", "0"})}
	}},
	{"insert_dimension", 4, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.insert_dimension($1, $2, NULL, NULL, NULL)`, []any{r.IntN(3), pick(r, fieldNames)}
	}},
	{"expire_dimension", 3, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.expire_dimension(` + randomDimension + `, localtimestamp(6))`, nil
	}},
	{"save_index", 4, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.save_index($1, $2, $3, ` + randomValidity + `, NULL)`, []any{pick(r, indexNames), pick(r, methods), pick(r, []any{nil, "fast_ssd"})}
	}},
	{"expire_index", 2, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.expire_index(` + randomIndex + `, localtimestamp(6))`, nil
	}},
	{"append_index_field", 5, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.append_index_field(` + randomIndex + `, $1, NULL, NULL)`, []any{pick(r, exprs)}
	}},
	{"insert_index_field", 4, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.insert_index_field(` + randomIndex + `, $1, $2, NULL, ` + randomValidity + `)`, []any{r.IntN(3), pick(r, exprs)}
	}},
	{"expire_index_field", 3, func(r *rand.Rand) (string, []any) {
		return `SELECT storage.expire_index_field(` + randomField + `, localtimestamp(6))`, nil
	}},

	// Plain DML: key-moving updates, deletes, truncates, unchanged TOAST.
	{"move instance port", 4, func(r *rand.Rand) (string, []any) {
		return `UPDATE storage.postgres_instance SET port = $1 WHERE id = ` + randomInstance, []any{5432 + r.IntN(3)}
	}},
	{"move instance host", 2, func(r *rand.Rand) (string, []any) {
		return `UPDATE storage.postgres_instance SET host = $1 WHERE id = ` + randomInstance, []any{pick(r, hosts)}
	}},
	{"move config key", 4, func(r *rand.Rand) (string, []any) {
		return `UPDATE storage.config SET key = $1 WHERE key = ` + randomConfigKey, []any{pick(r, configKeys)}
	}},
	{"touch big config", 4, func(r *rand.Rand) (string, []any) {
		// Leaves value (TOASTed when big) unchanged.
		return `UPDATE storage.config SET id = id WHERE key = ANY($1)`, []any{configKeys[8:]}
	}},
	{"renumber big config", 2, func(r *rand.Rand) (string, []any) {
		return `UPDATE storage.config SET id = nextval(pg_get_serial_sequence('storage.config', 'id')) WHERE key = $1`, []any{pick(r, configKeys[8:])}
	}},
	{"touch servermap", 2, func(r *rand.Rand) (string, []any) {
		return `UPDATE storage.servermap SET id = id WHERE id = (SELECT max(id) FROM storage.servermap)`, nil
	}},
	{"move dimension ordinality", 2, func(r *rand.Rand) (string, []any) {
		return `UPDATE storage.dimension SET ordinality = ordinality + 10 WHERE id = ` + randomDimension, nil
	}},
	{"rename index", 2, func(r *rand.Rand) (string, []any) {
		return `UPDATE storage.index SET indexname = $1 WHERE id = ` + randomIndex, []any{pick(r, indexNames)}
	}},
	{"delete instance", 3, func(r *rand.Rand) (string, []any) {
		return `DELETE FROM storage.postgres_instance WHERE id = ` + randomInstance, nil
	}},
	{"delete config", 3, func(r *rand.Rand) (string, []any) {
		return `DELETE FROM storage.config WHERE key = ` + randomConfigKey, nil
	}},
	{"delete dimension", 2, func(r *rand.Rand) (string, []any) {
		return `DELETE FROM storage.dimension WHERE id = ` + randomDimension, nil
	}},
	{"delete index field", 2, func(r *rand.Rand) (string, []any) {
		return `DELETE FROM storage.index_field WHERE id = ` + randomField, nil
	}},
	{"delete newest servermap", 1, func(r *rand.Rand) (string, []any) {
		// /Servermap falls back to the generation before.
		return `DELETE FROM storage.servermap WHERE id = (SELECT max(id) FROM storage.servermap)`, nil
	}},
	{"bulk config", 1, func(r *rand.Rand) (string, []any) {
		// More rows in one transaction than an etcd batch holds.
		return `INSERT INTO storage.config (key, value) SELECT 'bulk/' || g, json_build_object('g', g, 'r', $1::int) FROM generate_series(1, 300) g
			ON CONFLICT (key) DO UPDATE SET value = excluded.value`, []any{r.IntN(1000)}
	}},
	{"bulk delete", 1, func(r *rand.Rand) (string, []any) {
		return `DELETE FROM storage.config WHERE key LIKE 'bulk/%'`, nil
	}},
	{"truncate config", 1, func(r *rand.Rand) (string, []any) { return `TRUNCATE storage.config`, nil }},
	{"truncate instances", 1, func(r *rand.Rand) (string, []any) { return `TRUNCATE storage.postgres_instance`, nil }},
	{"truncate servermap", 1, func(r *rand.Rand) (string, []any) { return `TRUNCATE storage.servermap`, nil }},
	{"truncate indexes", 1, func(r *rand.Rand) (string, []any) {
		return `TRUNCATE storage.index_field, storage.index`, nil
	}},
	{"truncate dimensions", 1, func(r *rand.Rand) (string, []any) { return `TRUNCATE storage.dimension`, nil }},
}

var opWeights = func() int {
	n := 0
	for _, o := range ops {
		n += o.weight
	}
	return n
}()

func randomOp(r *rand.Rand) op {
	n := r.IntN(opWeights)
	for _, o := range ops {
		if n < o.weight {
			return o
		}
		n -= o.weight
	}
	panic("unreachable")
}

// workload counts what writers did.
type workload struct {
	committed, rolledBack, failed atomic.Int64
	mu                            sync.Mutex
	errs                          map[string]int // failure → count, for the log
	opsDone                       map[string]int // committed ops by name
}

func newWorkload() *workload {
	return &workload{errs: map[string]int{}, opsDone: map[string]int{}}
}

// write runs random transactions until ctx ends: mostly one op, sometimes
// several, sometimes rolled back on purpose. Failures the workload provokes
// (unique and foreign-key violations, deadlocks, NULL ids) are expected and
// counted; the database, not the workload's plan, is the truth the store
// is compared with.
func (w *workload) write(ctx context.Context, pool *pgxpool.Pool, r *rand.Rand) {
	for ctx.Err() == nil {
		n := 1
		if r.IntN(4) == 0 {
			n = 2 + r.IntN(4)
		}
		rollback := r.IntN(20) == 0
		var names []string
		err := func() error {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(context.Background())
			if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = '10s'; SET LOCAL lock_timeout = '3s'`); err != nil {
				return err
			}
			for range n {
				o := randomOp(r)
				sql, args := o.sql(r)
				if _, err := tx.Exec(ctx, sql, args...); err != nil {
					return fmt.Errorf("%s: %w", o.name, err)
				}
				names = append(names, o.name)
			}
			if rollback {
				return tx.Rollback(ctx)
			}
			return tx.Commit(ctx)
		}()
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil:
			w.failed.Add(1)
			w.note(errKind(err))
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code[:2] == "57" {
				// The server is down or restarting: don't spin.
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		case rollback:
			w.rolledBack.Add(1)
		default:
			w.committed.Add(1)
			w.mu.Lock()
			for _, n := range names {
				w.opsDone[n]++
			}
			w.mu.Unlock()
		}
	}
}

func (w *workload) note(kind string) {
	w.mu.Lock()
	w.errs[kind]++
	w.mu.Unlock()
}

// errKind names an error by op and SQLSTATE, so the log stays short.
func errKind(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		op, _, _ := strings.Cut(err.Error(), ":")
		return op + ": " + pgErr.Code + " " + pgErr.Message
	}
	if errors.Is(err, pgx.ErrTxClosed) {
		return "tx closed"
	}
	return err.Error()
}

func (w *workload) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "%d transactions committed, %d rolled back on purpose, %d failed", w.committed.Load(), w.rolledBack.Load(), w.failed.Load())
	b.WriteString("\ncommitted ops:")
	b.WriteString(formatCounts(w.opsDone))
	if len(w.errs) > 0 {
		b.WriteString("\nfailures:")
		b.WriteString(formatCounts(w.errs))
	}
	return b.String()
}

func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] })
	var b strings.Builder
	for i, k := range keys {
		if i == 25 {
			fmt.Fprintf(&b, "\n  … %d more kinds", len(keys)-i)
			break
		}
		fmt.Fprintf(&b, "\n  %5d %s", m[k], k)
	}
	return b.String()
}
