package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/bagger/lenkwerk/agent/devstack"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/etcd" // etcd://
	_ "github.com/bagger/lenkwerk/kvdriver/pgkv" // postgres://
	"github.com/bagger/lenkwerk/migrations"
)

// StoreKind names a store the scenarios run against.
type StoreKind string

// The stores of an Env.
const (
	Etcd StoreKind = "etcd"
	PGKV StoreKind = "pgkv"
)

// Options configure an Env.
type Options struct {
	// Dir holds the etcd member, the agent binary and the
	// agents' logs; default a new temporary directory, removed by Close.
	Dir string
	// InProcess runs the agent inside this process (no binary, no RSS
	// figure, but visible to `go test -cpuprofile`).
	InProcess bool
	// Bin is a lenkwerk binary to use instead of building one.
	Bin string
}

// Env is one benchmark environment: a private PostgreSQL cluster, an
// embedded etcd member, a pgkv database and the lenkwerk binary.
type Env struct {
	Dir       string
	PG        *devstack.Cluster
	Etcd      *devstack.EtcdServer
	Bin       string
	InProcess bool

	stack     *devstack.Stack
	removeDir bool
	seq       atomic.Int64

	copyMu sync.Mutex
	copies []*localCopy // the follow fan-out's
}

// NewEnv starts the servers and builds the agent.
func NewEnv(ctx context.Context, opts Options) (_ *Env, err error) {
	e := &Env{Dir: opts.Dir, InProcess: opts.InProcess, Bin: opts.Bin}
	if e.Dir == "" {
		if e.Dir, err = os.MkdirTemp("", "lwbench-"); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		e.removeDir = true
	}
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if !e.InProcess && e.Bin == "" {
		if e.Bin, err = buildAgent(ctx, e.Dir); err != nil {
			return nil, err
		}
	}
	// PostgreSQL in a directory of its own: as root the server runs as
	// postgres, which must be able to enter it.
	e.stack, err = devstack.StartStack(ctx, devstack.StackOptions{
		Postgres: devstack.Options{Settings: map[string]string{
			// Production's default; see the package comment.
			"synchronous_commit": "on",
			// No checkpoints in the middle of a bulk load.
			"max_wal_size": "'4GB'",
			// The fan-out scenario's 300 pgkv consumers hold a
			// connection each.
			"max_connections": "500",
			// The follow fan-out reads when each local copy
			// committed each row.
			"track_commit_timestamp": "on",
		}},
		// The pgkv store's; each Source is a database of its own.
		Database:    kvDatabase,
		EtcdMembers: 1,
		Etcd:        devstack.EtcdOptions{Dir: filepath.Join(e.Dir, "etcd"), UnsafeNoFsync: true},
	})
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	e.PG, e.Etcd = e.stack.Postgres, e.stack.Etcd
	return e, nil
}

// kvDatabase is the database of the pgkv store.
const kvDatabase = "lenkwerk_kv"

// buildAgent builds ./agent/cmd/lenkwerk of this module into dir.
func buildAgent(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("bench: go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	bin := filepath.Join(dir, "lenkwerk")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./agent/cmd/lenkwerk")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("bench: go build ./agent/cmd/lenkwerk: %w\n%s", err, out)
	}
	return bin, nil
}

// Close stops the servers and removes a temporary Dir.
func (e *Env) Close() error {
	var errs []error
	e.closeCopies()
	if e.stack != nil {
		errs = append(errs, e.stack.Close())
	}
	if e.removeDir {
		errs = append(errs, os.RemoveAll(e.Dir))
	}
	return errors.Join(errs...)
}

// StoreURL is the URL of a store of the Env.
func (e *Env) StoreURL(kind StoreKind) string {
	if kind == PGKV {
		return e.stack.DatabaseURL("")
	}
	return e.Etcd.URL()
}

// OpenStore opens a new connection to a store of the Env.
func (e *Env) OpenStore(ctx context.Context, kind StoreKind) (*kvdriver.Store, error) {
	s, err := kvdriver.Open(ctx, e.StoreURL(kind))
	if err != nil {
		return nil, fmt.Errorf("bench: open %s: %w", kind, err)
	}
	return s, nil
}

// next returns a number unique in the Env, for names and key prefixes.
func (e *Env) next() int64 { return e.seq.Add(1) }

// Source is a Lenkwerk database provisioned by the migrations, with a slot
// of its own (slot names are cluster-wide).
type Source struct {
	Name     string
	URL      string // superuser: the benchmark's writes
	AgentURL string // lenkwerk_agent, as deployed
	Slot     string
	Pool     *pgxpool.Pool
	env      *Env
}

// NewSource creates and migrates a fresh Lenkwerk database.
func (e *Env) NewSource(ctx context.Context) (*Source, error) {
	n := e.next()
	s := &Source{Name: fmt.Sprintf("lw_%d", n), Slot: fmt.Sprintf("lw_agent_%d", n), env: e}
	if err := e.stack.CreateDatabase(ctx, s.Name); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	s.URL = e.PG.URL(s.Name, "")
	s.AgentURL = e.PG.URL(s.Name, "lenkwerk_agent")
	if err := migrations.Up(ctx, s.URL, migrations.Options{Slot: s.Slot}); err != nil {
		return nil, fmt.Errorf("bench: migrate %s: %w", s.Name, err)
	}
	pool, err := pgxpool.New(ctx, s.URL)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	s.Pool = pool
	return s, nil
}

// Close drops the database (and its slots).
func (s *Source) Close() error {
	s.Pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return s.env.PG.DropDatabase(ctx, s.Name)
}

// InsertConfig inserts rows storage.config rows named <name>-<n> for n in
// [from, from+rows) in one statement, in its own transaction; it returns
// an LSN before the commit record (the commit's end LSN is after it).
func (s *Source) InsertConfig(ctx context.Context, name string, from, rows int) (preCommit string, err error) {
	tx, err := s.Pool.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("bench: begin: %w", err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, insertRows, name, from, from+rows-1); err != nil {
		return "", fmt.Errorf("bench: insert %d rows: %w", rows, err)
	}
	if err := tx.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&preCommit); err != nil {
		return "", fmt.Errorf("bench: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return "", fmt.Errorf("bench: commit: %w", err)
	}
	return preCommit, nil
}

// insertRows makes rows of the size of Bagger's configuration values.
const insertRows = `INSERT INTO storage.config (key, value)
SELECT $1::text || '-' || lpad(g::text, 7, '0'),
       json_build_object('g', g, 'node', 'db' || (g % 64) || '.example.net', 'port', 5432, 'status', 3, 'comment', 'benchmark row of a typical size')
FROM generate_series($2::int, $3::int) g`

// rowValue is what the agent writes for row g of insertRows (as to_jsonb
// gives it), the value of the raw baselines.
func rowValue(id int, key string, g int) []byte {
	return fmt.Appendf(nil, `{"id": %d, "key": %q, "value": {"g": %d, "node": "db%d.example.net", "port": 5432, "status": 3, "comment": "benchmark row of a typical size"}}`, id, key, g, g%64)
}

// rowKey is the key name of row g of insertRows.
func rowKey(name string, g int) string { return fmt.Sprintf("%s-%07d", name, g) }

// WaitSlotReleased waits until no walsender holds the source's slot: an
// agent started earlier would wait for it (in rounds of a second), which
// the clock of the next run must not count.
func (s *Source) WaitSlotReleased(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for {
		var active bool
		err := s.Pool.QueryRow(ctx, `SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1`, s.Slot).Scan(&active)
		if err != nil {
			return fmt.Errorf("bench: slot %s: %w", s.Slot, err)
		}
		if !active {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: slot %s still active after a minute", s.Slot)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// WALBytes is the WAL written by the cluster from lsn to now.
func (s *Source) WALBytes(ctx context.Context, lsn string) (int64, error) {
	var n int64
	err := s.Pool.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint`, lsn).Scan(&n)
	return n, err
}
