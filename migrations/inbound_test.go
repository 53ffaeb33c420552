package migrations_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/follow"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// baggerRelations routes keys to relations as Bagger's storage agent does
// (Bagger::Agent::Storage::Mapper): bare names, found by its search_path.
var baggerRelations = []struct {
	re  *regexp.Regexp
	rel string
}{
	{regexp.MustCompile(`^/Config`), "config"},
	{regexp.MustCompile(`^/PostgresInstance`), "postgres_instance"},
	{regexp.MustCompile(`^/Servermap`), "servermap"},
	{regexp.MustCompile(`^/Dimension`), "dimension"},
	{regexp.MustCompile(`^/Index/\d+/\d`), "index_field"},
	{regexp.MustCompile(`^/Index/\d+$`), "index"},
}

// baggerConsumer does with the store what Bagger's storage agent does: it
// loads every value it lists or watches into its local copy with
// storage.inbound_from_kvstore, each in a transaction of its own, and
// cannot apply a delete (a key without value).
type baggerConsumer struct {
	conn    *pgx.Conn
	applied atomic.Int64 // the store revision it has applied
	deletes atomic.Int64 // deletes it could not apply
	mu      sync.Mutex
	errs    []error
}

func (b *baggerConsumer) load(ctx context.Context, key string, value []byte) {
	for _, r := range baggerRelations {
		if !r.re.MatchString(key) {
			continue
		}
		if _, err := b.conn.Exec(ctx, `SELECT * FROM storage.inbound_from_kvstore(in_relname := $1, in_value := $2)`, r.rel, string(value)); err != nil && ctx.Err() == nil {
			b.mu.Lock()
			b.errs = append(b.errs, fmt.Errorf("%s: %w", key, err))
			b.mu.Unlock()
		}
		return
	}
}

func (b *baggerConsumer) run(ctx context.Context, store *kvdriver.Store) error {
	kvs, rev, err := store.List(ctx, "/")
	if err != nil {
		return err
	}
	for _, kv := range kvs {
		b.load(ctx, kv.Key, kv.Value)
	}
	b.applied.Store(rev)
	for resp := range store.Watch(ctx, "/", rev) {
		if resp.Err != nil {
			return resp.Err
		}
		for _, ev := range resp.Events {
			if ev.Type == kvdriver.OpDelete {
				b.deletes.Add(1)
				continue
			}
			b.load(ctx, ev.Key, ev.Value)
		}
		b.applied.Store(resp.Revision)
	}
	return ctx.Err()
}

func (b *baggerConsumer) failures() []error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]error(nil), b.errs...)
}

// copyRows are the rows of every Bagger table of a copy, sorted.
func copyRows(t *testing.T, ctx context.Context, conn *pgx.Conn) map[string][]string {
	t.Helper()
	mustExec(t, ctx, conn, `SET TimeZone = 'UTC'`)
	rows := map[string][]string{}
	for _, tb := range tables {
		rows[tb] = queryStrings(t, ctx, conn, `SELECT to_jsonb(t.*)::text FROM ONLY storage.`+pgx.Identifier{tb}.Sanitize()+` t ORDER BY 1`)
	}
	return rows
}

// loginRole creates a login role that is a member of lenkwerk_config, as
// migrations/README.md tells operators to do for Bagger's tools; dropped at the end.
func loginRole(t *testing.T, ctx context.Context, conn *pgx.Conn, name string) {
	t.Helper()
	mustExec(t, ctx, conn, `CREATE ROLE `+name+` LOGIN IN ROLE lenkwerk_config`)
	t.Cleanup(func() {
		if _, err := conn.Exec(context.Background(), `DROP ROLE `+name); err != nil {
			t.Errorf("drop role %s: %v", name, err)
		}
	})
}

// Bagger's storage agent, loading what the Lenkwerk agent mirrors into a
// local copy through inbound_from_kvstore, gets the tables lenkwerk follow
// gets from the same store: new rows, updates of existing rows, rows whose
// key changed (a delete and a put in the store) and values that moved
// between rows. Only a deleted row stays, which it cannot apply.
func TestInboundFromKVStoreMatchesFollow(t *testing.T) {
	// Each step waits at most a minute (waitMirrored, caughtUp); this
	// bounds the whole test.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	src := migrated(t, ctx)
	srcConn := connect(t, ctx, src)
	store := memStore(t, ctx)
	runAgent(t, ctx, src, store)

	// lenkwerk follow's copy.
	followed := pgtest.NewDatabase(t)
	f, err := follow.New(follow.Config{DatabaseURL: followed, Store: store, StoreName: "mem", Migrate: true,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stopFollow := context.WithCancel(ctx)
	followDone := make(chan error, 1)
	go func() { followDone <- f.Run(fctx) }()
	t.Cleanup(func() {
		stopFollow()
		if err := <-followDone; err != nil {
			t.Errorf("follow: %v", err)
		}
	})

	// Bagger's storage agent's copy, loaded as a member of lenkwerk_config
	// with storage in its search_path.
	loaded := pgtest.NewDatabase(t)
	if err := migrations.Up(ctx, loaded, migrations.Options{Copy: true}); err != nil {
		t.Fatal(err)
	}
	role := "bagger_storage_agent_" + fmt.Sprint(time.Now().UnixNano())
	loginRole(t, ctx, connect(t, ctx, loaded), role)
	b := &baggerConsumer{conn: connect(t, ctx, asUser(t, loaded, role)+"&search_path=storage")}
	bctx, stopBagger := context.WithCancel(ctx)
	baggerDone := make(chan error, 1)
	go func() { baggerDone <- b.run(bctx, store) }()
	t.Cleanup(func() {
		stopBagger()
		if err := <-baggerDone; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Bagger's storage agent: %v", err)
		}
	})

	followedConn, loadedConn := connect(t, ctx, followed), connect(t, ctx, loaded)
	// caughtUp waits until both copies applied what the agent mirrored.
	caughtUp := func(step string) {
		t.Helper()
		waitMirrored(t, ctx, src, store)
		_, rev, err := store.List(ctx, "/")
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for f.Status().Revision < rev || b.applied.Load() < rev {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the copies never reached revision %d (follow %d, Bagger's %d)", step, rev, f.Status().Revision, b.applied.Load())
			}
			time.Sleep(10 * time.Millisecond)
		}
		if errs := b.failures(); len(errs) > 0 {
			t.Fatalf("%s: inbound_from_kvstore failed: %v", step, errs)
		}
	}
	same := func(step string) {
		t.Helper()
		caughtUp(step)
		want, got := copyRows(t, ctx, followedConn), copyRows(t, ctx, loadedConn)
		for _, tb := range tables {
			if !slices.Equal(got[tb], want[tb]) {
				t.Fatalf("after %s: storage.%s differs from lenkwerk follow's:\nfollow  %q\nBagger's %q", step, tb, want[tb], got[tb])
			}
		}
		if len(want["config"]) == 0 || len(want["dimension"]) == 0 {
			t.Fatalf("after %s: the copies are empty: %v", step, want)
		}
	}

	for _, sql := range []string{
		`SELECT storage.register_pg_instance('db1', 5432, 'bagger')`,
		`SELECT storage.register_pg_instance('db2', 5432, 'bagger')`,
		`SELECT storage.register_pg_instance('db2', 5433, 'bagger')`,
		`SELECT storage.set_pg_instance_status(1, 3)`,
		`SELECT storage.save_config('kvstore_type', '"etcd"')`,
		`SELECT storage.save_config('retention', '{"days": 30}')`,
		`SELECT storage.save_config('grüße', '"ä"')`,
		`SELECT storage.save_servermap('{"gen": 1}')`,
		`SELECT storage.save_servermap('{"gen": 2}')`,
		`SELECT storage.append_dimension('host', NULL, NULL, NULL)`,
		`SELECT storage.append_dimension('app', 'none', '2024-01-01', NULL)`,
		`SELECT storage.save_index('idx_a', 'btree', NULL, NULL, NULL)`,
		`SELECT storage.save_index('idx_b', 'gin', NULL, NULL, NULL)`,
		`SELECT storage.append_index_field(1, 'host', NULL, NULL)`,
		`SELECT storage.append_index_field(1, 'ts', NULL, NULL)`,
		`SELECT storage.append_index_field(2, 'msg', NULL, NULL)`,
	} {
		mustExec(t, ctx, srcConn, sql)
	}
	same("the first rows")

	for _, step := range []string{
		// Updates of existing rows (Bagger's own function fails on each).
		`SELECT storage.set_pg_instance_status(1, 0)`,
		`SELECT storage.save_config('kvstore_type', '"pgkv"')`,
		`SELECT storage.save_index('idx_a', 'hash', NULL, '2040-01-01', NULL)`,
		`SELECT storage.expire_index_field(2, '2031-02-03 04:05:06')`,
		`SELECT storage.save_servermap('{"gen": 3}')`,
		// Keys that change: a delete (not applied) and a put in the store.
		`UPDATE storage.config SET key = 'retention/moved' WHERE key = 'retention'`,
		`UPDATE storage.postgres_instance SET port = 6543 WHERE host = 'db2' AND port = 5432`,
		`UPDATE storage.index_field SET index_id = 2, ordinality = 1 WHERE id = 2`,
		// A primary key that is not the store key; an id that changes.
		`UPDATE storage.dimension SET fieldname = 'hostname' WHERE fieldname = 'host'`,
		`UPDATE storage.config SET id = 99 WHERE key = 'kvstore_type'`,
		// Unique values moving between rows in one transaction.
		`SELECT storage.insert_dimension(0, 'tenant', NULL, NULL, NULL)`,
		`UPDATE storage.dimension SET ordinality = CASE ordinality WHEN 1 THEN 2 ELSE 1 END WHERE ordinality IN (1, 2)`,
	} {
		mustExec(t, ctx, srcConn, step)
		same(step)
	}

	// A deleted row: lenkwerk follow deletes it, Bagger's agent cannot.
	deletes := b.deletes.Load()
	mustExec(t, ctx, srcConn, `DELETE FROM storage.config WHERE key = 'grüße'`)
	caughtUp("a delete")
	want, got := copyRows(t, ctx, followedConn), copyRows(t, ctx, loadedConn)
	extra := slices.DeleteFunc(slices.Clone(got["config"]), func(r string) bool { return slices.Contains(want["config"], r) })
	if b.deletes.Load() == deletes || len(extra) != 1 || !strings.Contains(extra[0], "grüße") {
		t.Fatalf("after a delete: Bagger's copy keeps %q beyond lenkwerk follow's (%d deletes seen)", extra, b.deletes.Load()-deletes)
	}
}

// inbound_from_kvstore refuses what is not a row of a Lenkwerk table,
// exists only in local copies, and only lenkwerk_config may call it.
func TestInboundFromKVStoreRefuses(t *testing.T) {
	ctx := testContext(t)
	if !queryBool(t, ctx, connect(t, ctx, migrated(t, ctx)), `SELECT to_regprocedure('storage.inbound_from_kvstore(regclass,json)') IS NULL`) {
		t.Fatal("the database of record has inbound_from_kvstore")
	}
	local := pgtest.NewDatabase(t)
	if err := migrations.Up(ctx, local, migrations.Options{Copy: true}); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, ctx, local)
	call := `SELECT storage.inbound_from_kvstore($1, $2)`
	for _, c := range []struct {
		rel   string
		value any
		want  string
	}{
		{"lenkwerk.setting", `{"id": 1}`, "lenkwerk.setting is not a Lenkwerk table"},
		{"storage.time_bound", `{"id": 1}`, "storage.time_bound is not a Lenkwerk table"},
		{"storage.config", nil, "the value for storage.config is missing, not a row"},
		{"storage.config", `[1, 2]`, "the value for storage.config is array, not a row"},
		{"storage.config", `{"key": "k", "value": 1}`, "the value for storage.config has no id"},
	} {
		_, err := conn.Exec(ctx, call, c.rel, c.value)
		if sqlState(err) != "22023" || !strings.Contains(err.Error(), c.want) {
			t.Errorf("inbound_from_kvstore(%s, %v): %v, want %q", c.rel, c.value, err, c.want)
		}
	}
	_, err := conn.Exec(ctx, call, "storage.config", nil)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !strings.Contains(pgErr.Hint, "lenkwerk follow applies them") {
		t.Errorf("a missing value: %v, want the advice on deletes", err)
	}
	// Data the table refuses fails as the table refuses it.
	if _, err := conn.Exec(ctx, call, "storage.postgres_instance", `{"id": 1, "host": "h", "port": 1, "username": "u", "status": 9}`); sqlState(err) != "23514" {
		t.Errorf("an invalid status: %v, want a check violation", err)
	}

	role := "bagger_outsider_" + fmt.Sprint(time.Now().UnixNano())
	mustExec(t, ctx, conn, `CREATE ROLE `+role+` LOGIN`)
	t.Cleanup(func() { conn.Exec(context.Background(), `DROP ROLE `+role) })
	outsider := connect(t, ctx, asUser(t, local, role))
	if _, err := outsider.Exec(ctx, `SELECT storage.inbound_from_kvstore('storage.config', '{"id": 1, "key": "k", "value": 1}')`); sqlState(err) != "42501" {
		t.Errorf("called by a role outside lenkwerk_config: %v, want permission denied", err)
	}
}
