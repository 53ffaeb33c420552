package follow_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent/follow"
	"github.com/bagger/lenkwerk/agent/keymap"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	_ "github.com/bagger/lenkwerk/kvdriver/mem"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// env is a local copy, a store and a running follower.
type env struct {
	t      *testing.T
	ctx    context.Context
	local  string
	db     *pgx.Conn
	store  *kvdriver.Store
	cfg    follow.Config
	f      *follow.Follower
	logs   *testutil.Buffer
	stop   func()
	runErr error
}

func newEnv(t *testing.T, storeURL string, cfg follow.Config) *env {
	t.Helper()
	ctx := testContext(t)
	if storeURL == "" {
		storeURL = "mem://"
	}
	store, err := kvdriver.Open(ctx, storeURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e := &env{t: t, ctx: ctx, store: store, logs: &testutil.Buffer{}}
	e.local = pgtest.NewDatabase(t)
	cfg.DatabaseURL = e.local
	cfg.Store = store
	cfg.StoreName = kvdriver.Redact(storeURL)
	cfg.Migrate = true
	cfg.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg.MinBackoff = 20 * time.Millisecond
	cfg.MaxBackoff = 200 * time.Millisecond
	e.cfg = cfg
	return e
}

// newFollowingEnv is newEnv (no prefix, the default templates) with the
// baseline keys in the store and a running follower caught up with them.
func newFollowingEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, "", follow.Config{})
	e.apply(baseline("")...)
	e.start()
	e.caughtUp()
	return e
}

// start runs a new follower until stop.
func (e *env) start() {
	e.t.Helper()
	f, err := follow.New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.f = f
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.runErr = f.Run(ctx)
	}()
	e.stop = func() {
		cancel()
		<-done
		if e.runErr != nil {
			e.t.Errorf("Run: %v", e.runErr)
		}
		e.stop = nil
	}
	e.t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
		}
	})
}

// conn is a connection to the local copy (after the follower migrated it).
func (e *env) conn() *pgx.Conn {
	e.t.Helper()
	if e.db == nil {
		c, err := pgx.Connect(e.ctx, e.local)
		if err != nil {
			e.t.Fatal(err)
		}
		e.t.Cleanup(func() { c.Close(context.Background()) })
		e.db = c
	}
	return e.db
}

func (e *env) apply(ops ...kvdriver.Op) int64 {
	e.t.Helper()
	rev, err := e.store.Apply(e.ctx, ops)
	if err != nil {
		e.t.Fatalf("Apply: %v", err)
	}
	return rev
}

func put(key string, row any) kvdriver.Op {
	b, err := json.Marshal(row)
	if err != nil {
		panic(err)
	}
	return kvdriver.Put(key, b)
}

// storeRevision is the store's current revision.
func (e *env) storeRevision() int64 {
	e.t.Helper()
	_, rev, err := e.store.List(e.ctx, "/no/such/key")
	if err != nil {
		e.t.Fatal(err)
	}
	return rev
}

// compact compacts the store's history up to its current revision: a
// follower started next finds its revision compacted and reconciles.
func (e *env) compact() {
	e.t.Helper()
	if err := e.store.Compact(e.ctx, e.storeRevision()); err != nil {
		e.t.Fatal(err)
	}
}

// caughtUp waits until the follower has applied the store's current
// revision.
func (e *env) caughtUp() {
	e.t.Helper()
	want := e.storeRevision()
	deadline := time.Now().Add(30 * time.Second)
	for e.f.Status().Revision < want {
		if time.Now().After(deadline) {
			e.t.Fatalf("follower at revision %d, store at %d after 30s; logs:\n%s", e.f.Status().Revision, want, e.logs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// equal checks that every row of the templates' tables is, as to_jsonb,
// the store's value under its key, and that every store key of a template
// has its row.
func (e *env) equal(skip ...string) {
	e.t.Helper()
	m, err := keymap.New(e.cfg.Prefix, e.cfg.Templates)
	if err != nil {
		e.t.Fatal(err)
	}
	want := map[string]string{}
	kvs, _, err := e.store.List(e.ctx, "/")
	if err != nil {
		e.t.Fatal(err)
	}
	templates := m.Templates()
	for _, kv := range kvs {
		for _, tm := range templates {
			if tm.Match(kv.Key) && !contains(skip, kv.Key) {
				want[kv.Key] = string(kv.Value)
				break
			}
		}
	}
	got := map[string]string{}
	for _, tm := range templates {
		if contains(skip, "table:"+tm.Table()) {
			continue
		}
		schema, name, _ := strings.Cut(tm.Table(), ".")
		rows, err := e.conn().Query(e.ctx, "SELECT to_jsonb(t.*)::text FROM ONLY "+pgx.Identifier{schema, name}.Sanitize()+" t")
		if err != nil {
			e.t.Fatal(err)
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			e.t.Fatal(err)
		}
		for _, v := range vals {
			var row map[string]json.RawMessage
			if err := json.Unmarshal([]byte(v), &row); err != nil {
				e.t.Fatal(err)
			}
			k, err := tm.Key(row)
			if err != nil {
				e.t.Fatalf("local row of %s without key: %s", tm.Table(), v)
			}
			if contains(skip, k) {
				continue
			}
			if _, dup := got[k]; dup {
				e.t.Errorf("two local rows for %s", k)
			}
			got[k] = v
		}
	}
	var diffs []string
	for k, w := range want {
		g, ok := got[k]
		switch {
		case !ok:
			diffs = append(diffs, "missing locally: "+k)
		case !jsonEqual(w, g):
			diffs = append(diffs, fmt.Sprintf("%s: local %s, store %s", k, g, w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			diffs = append(diffs, "not in the store: "+k)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		e.t.Fatalf("local copy differs from the store:\n%s\nlogs:\n%s", strings.Join(diffs, "\n"), e.logs)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func jsonEqual(a, b string) bool {
	var x, y any
	if json.Unmarshal([]byte(a), &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

func (e *env) count(sql string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.conn().QueryRow(e.ctx, sql, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// Rows as to_jsonb gives them for the Lenkwerk tables.
type (
	row = map[string]any
)

func config(id int, key string, value any) row { return row{"id": id, "key": key, "value": value} }

func instance(id int, host string, port, status int) row {
	return row{"id": id, "host": host, "port": port, "username": "bagger", "status": status}
}

func servermap(id int, gen int) row { return row{"id": id, "server_map": row{"gen": gen}} }

func dimension(id, ord int, field string) row {
	return row{"valid_from": "-infinity", "valid_until": "infinity", "id": id, "ordinality": ord, "default_val": "notexist", "fieldname": field}
}

func index(id int, name, am string) row {
	return row{"valid_from": "-infinity", "valid_until": "infinity", "id": id, "indexname": name, "access_method": am, "tablespc": "pg_default"}
}

func field(id, indexID, ord int, expr string) row {
	return row{"valid_from": "-infinity", "valid_until": "2030-01-01T00:00:00", "id": id, "index_id": indexID, "ordinality": ord, "expression": expr}
}

// baseline is a small cluster state.
func baseline(prefix string) []kvdriver.Op {
	return []kvdriver.Op{
		put(prefix+"/Config/kvstore_type", config(1, "kvstore_type", "etcd")),
		put(prefix+"/Config/a%2Fb", config(2, "a/b", row{"nested": []any{1, "x", nil}})),
		put(prefix+"/PostgresInstance/db1/5432", instance(1, "db1", 5432, 3)),
		put(prefix+"/PostgresInstance/db2/5432", instance(2, "db2", 5432, 0)),
		put(prefix+"/Servermap", servermap(3, 3)),
		put(prefix+"/Dimension/1", dimension(1, 0, "host")),
		put(prefix+"/Dimension/2", dimension(2, 1, "app")),
		put(prefix+"/Index/1", index(1, "by_host", "btree")),
		put(prefix+"/Index/2", index(2, "by_app", "gin")),
		put(prefix+"/Index/1/10", field(10, 1, 0, "host")),
		put(prefix+"/Index/1/11", field(11, 1, 1, "lower(app)")),
		put(prefix+"/.lenkwerk/checkpoint/lw_agent", row{"lsn": "0/16B3748"}),
	}
}

func TestLoadAndFollow(t *testing.T) {
	e := newFollowingEnv(t)
	e.equal()

	steps := []struct {
		name string
		ops  []kvdriver.Op
	}{
		{"new rows", []kvdriver.Op{
			put("/Config/x", config(3, "x", 1)),
			put("/Index/3", index(3, "by_level", "hash")),
			put("/Index/3/12", field(12, 3, 0, "level")),
		}},
		{"update in place, parent with children", []kvdriver.Op{
			put("/Index/1", index(1, "by_host", "gist")),
			put("/PostgresInstance/db2/5432", instance(2, "db2", 5432, 3)),
		}},
		{"move a field to another index", []kvdriver.Op{
			kvdriver.Delete("/Index/1/11"),
			put("/Index/2/11", field(11, 2, 0, "lower(app)")),
		}},
		{"instance port change keeps its unique id", []kvdriver.Op{
			kvdriver.Delete("/PostgresInstance/db1/5432"),
			put("/PostgresInstance/db1/5433", instance(1, "db1", 5433, 3)),
		}},
		{"dimension inserted first (deferred ordinality)", []kvdriver.Op{
			put("/Dimension/3", dimension(3, 0, "tenant")),
			put("/Dimension/1", dimension(1, 1, "host")),
			put("/Dimension/2", dimension(2, 2, "app")),
		}},
		{"dimensions swap their names (unique, not deferrable)", []kvdriver.Op{
			put("/Dimension/1", dimension(1, 1, "app")),
			put("/Dimension/2", dimension(2, 2, "host")),
		}},
		{"config recreated with a new id", []kvdriver.Op{
			put("/Config/x", config(4, "x", 2)),
		}},
		{"index deleted with its fields", []kvdriver.Op{
			kvdriver.Delete("/Index/3"),
			kvdriver.Delete("/Index/3/12"),
		}},
		{"new servermap generation", []kvdriver.Op{
			put("/Servermap", servermap(4, 4)),
		}},
		{"newest generation deleted", []kvdriver.Op{
			put("/Servermap", servermap(3, 3)),
		}},
		{"servermap emptied", []kvdriver.Op{
			kvdriver.Delete("/Servermap"),
		}},
	}
	for _, s := range steps {
		e.apply(s.ops...)
		e.caughtUp()
		t.Run(s.name, func(t *testing.T) { e.equal() })
	}
	// Several revisions in one go, and deletes of absent keys.
	e.apply(put("/Config/y", config(5, "y", true)))
	e.apply(kvdriver.Delete("/Config/y"), put("/Config/z", config(6, "z", "s")))
	e.apply(put("/Config/y", config(7, "y", false)))
	e.caughtUp()
	e.equal()
	if n := e.count(`SELECT count(*) FROM storage.servermap`); n != 0 {
		t.Fatalf("servermap has %d rows after its key was deleted", n)
	}
	if s := e.f.Status(); s.Skipped != 0 {
		t.Fatalf("skipped %d changes; logs:\n%s", s.Skipped, e.logs)
	}
	if !strings.Contains(e.logs.String(), "revision applied with every touched row deleted first") {
		t.Fatalf("the name swap was not applied by deleting first:\n%s", e.logs)
	}
	if strings.Contains(e.logs.String(), "checkpoint/lw_agent") {
		t.Fatalf("the agent's reserved key was logged:\n%s", e.logs)
	}
}

// countWrites installs a trigger that counts the rows written to
// storage.config, to tell what a restarted follower applies.
func (e *env) countWrites() {
	e.t.Helper()
	for _, sql := range []string{
		`CREATE TABLE public.writes (n int NOT NULL)`,
		`INSERT INTO public.writes VALUES (0)`,
		`CREATE FUNCTION public.count_write() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN UPDATE public.writes SET n = n + 1; RETURN NULL; END$$`,
		`CREATE TRIGGER count_write AFTER INSERT OR UPDATE OR DELETE ON storage.config FOR EACH ROW EXECUTE FUNCTION public.count_write()`,
	} {
		if _, err := e.conn().Exec(e.ctx, sql); err != nil {
			e.t.Fatalf("%s: %v", sql, err)
		}
	}
}

func (e *env) checkpoint() int64 {
	e.t.Helper()
	var rev int64
	if err := e.conn().QueryRow(e.ctx, `SELECT revision FROM lenkwerk.follow_state WHERE prefix = $1`, e.cfg.Prefix).Scan(&rev); err != nil {
		e.t.Fatal(err)
	}
	return rev
}

// A restarted follower resumes from its checkpoint: it applies only what
// changed while it was away, and applies nothing twice.
func TestRestartResumesFromCheckpoint(t *testing.T) {
	e := newEnv(t, "", follow.Config{Prefix: "/bagger"})
	e.apply(baseline("/bagger")...)
	e.start()
	e.caughtUp()
	e.countWrites()
	e.apply(put("/bagger/Config/x", config(3, "x", 1)))
	e.caughtUp()
	e.stop()
	if got, want := e.checkpoint(), e.storeRevision(); got != want {
		t.Fatalf("checkpoint %d, store at %d", got, want)
	}
	if n := e.count(`SELECT n FROM public.writes`); n != 1 {
		t.Fatalf("%d writes to storage.config, want 1", n)
	}
	// Changes while stopped, one of them to a key outside the prefix.
	e.apply(put("/bagger/Config/x", config(3, "x", 2)), kvdriver.Delete("/bagger/Config/kvstore_type"))
	e.apply(put("/Config/other", config(9, "other", 1)))
	e.apply(put("/bagger/Index/2/13", field(13, 2, 0, "app")))
	before := strings.Count(e.logs.String(), "reconciled")
	e.start()
	e.caughtUp()
	e.equal()
	if n := e.count(`SELECT n FROM public.writes`); n != 3 {
		t.Fatalf("%d writes to storage.config after the restart, want 3 (1 + an update and a delete)", n)
	}
	if after := strings.Count(e.logs.String(), "reconciled"); after != before || !strings.Contains(e.logs.String(), "resuming from checkpoint") {
		t.Fatalf("restart did not resume from the checkpoint:\n%s", e.logs)
	}
	if n := e.count(`SELECT count(*) FROM storage.config WHERE key = 'other'`); n != 0 {
		t.Fatal("a key outside the prefix was applied")
	}
}

// A watch whose history is compacted lists again and reconciles: rows of
// keys deleted meanwhile, and rows the store never had, are removed.
func TestCompactionReconciles(t *testing.T) {
	e := newFollowingEnv(t)
	e.stop()
	e.apply(kvdriver.Delete("/Index/1/11"), kvdriver.Delete("/Config/a%2Fb"), kvdriver.Delete("/Servermap"))
	e.apply(put("/Index/1/11", field(11, 1, 1, "upper(app)")), put("/Dimension/5", dimension(5, 2, "level")))
	e.apply(kvdriver.Delete("/PostgresInstance/db2/5432"))
	e.compact()
	// A row the store never had.
	if _, err := e.conn().Exec(e.ctx, `INSERT INTO storage.config (id, key, value) VALUES (99, 'stale', '1')`); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.caughtUp()
	e.equal()
	if !strings.Contains(e.logs.String(), "compacted") {
		t.Fatalf("no compaction was seen:\n%s", e.logs)
	}
	if n := e.count(`SELECT count(*) FROM storage.config WHERE key IN ('stale', 'a/b')`); n != 0 {
		t.Fatalf("%d stale config rows stayed", n)
	}
	// And it keeps following.
	e.apply(put("/Config/after", config(10, "after", 1)))
	e.caughtUp()
	e.equal()
}

// The follower never writes into a Lenkwerk source database.
func TestRefusesSource(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := pgtest.NewDatabase(t)
	if err := migrationsUp(ctx, src); err != nil {
		t.Fatal(err)
	}
	store, err := kvdriver.Open(ctx, "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	f, err := follow.New(follow.Config{DatabaseURL: src, Store: store, Migrate: true, Logger: slog.New(slog.NewTextHandler(&testutil.Buffer{}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	err = f.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "source") || ctx.Err() != nil {
		t.Fatalf("Run on a source: %v", err)
	}
}

// Hostile keys and values in the store, and templates naming tables that
// do not exist or must not be written, never become SQL: what can be
// applied is applied as data, the rest is logged and skipped, and the
// follower goes on.
func TestHostileStore(t *testing.T) {
	injection := `x'); DROP TABLE storage.index; --`
	e := newEnv(t, "", follow.Config{Templates: map[string]string{
		"storage.nope":                      "/Nope/{id}",
		"pg_catalog.pg_authid":              "/Auth/{rolname}",
		`storage.config"; DROP TABLE x; --`: "/Weird/{id}",
		`lenkwerk.follow_state`:             "/State/{prefix}",
		"storage.time_bound":                "/Nocol/{nope}",
	}})
	e.apply(baseline("")...)
	e.start()
	e.caughtUp()

	evilRow := config(21, "evil", 1)
	evilRow[`"; DROP TABLE storage.index; --`] = 1
	evilRow[`value" = NULL; --`] = 2
	bad := []kvdriver.Op{
		// Data that looks like SQL is data.
		put("/Config/"+keymap.EscapeSegment(injection), config(20, injection, injection)),
		put("/Config/evil", evilRow),
		// Skipped: not a row of its key.
		put("/Config/mismatch", config(22, "other", 1)),
		kvdriver.Put("/Config/notobj", []byte(`[1, 2]`)),
		kvdriver.Put("/Config/str", []byte(`"DROP TABLE storage.config"`)),
		put("/Config/%zz", config(23, "%zz", 1)),
		// Refused by the table: not an int, NOT NULL.
		put("/PostgresInstance/db9/1;DROP", row{"id": 30, "host": "db9", "port": "1;DROP", "username": "x", "status": 0}),
		put("/Dimension/31", row{"id": 31, "ordinality": 5}),
		// No template, or a template without a usable table.
		put("/pg_catalog/pg_authid/postgres", row{"rolname": "postgres", "rolsuper": false}),
		put("/storage/evil/1", row{"id": 1}),
		put("/Index/1/2/3", row{"id": 1}),
		put("/Nope/1", row{"id": 1}),
		put("/Auth/postgres", row{"rolname": "postgres", "rolsuper": false}),
		put("/Weird/1", row{"id": 1}),
		put("/State/x", row{"prefix": "", "store": "x", "revision": 1}),
		// And one good change in the same batch.
		put("/Config/good", config(24, "good", 1)),
	}
	e.apply(bad...)
	// A revision that breaks a deferred constraint (two dimensions at
	// ordinality 0) as a whole.
	e.apply(put("/Dimension/7", dimension(7, 0, "dup-ord")), put("/Config/with-dup", config(26, "with-dup", 1)))
	e.apply(put("/storage/evil/1", row{"id": 2})) // logged once only
	e.caughtUp()
	skipKeys := []string{"/Dimension/7", "/Config/evil", "/Config/mismatch", "/Config/notobj", "/Config/str", "/Config/%zz", "/PostgresInstance/db9/1;DROP", "/Dimension/31",
		"/Nope/1", "/Auth/postgres", "/Weird/1", "/State/x",
		"table:storage.nope", "table:pg_catalog.pg_authid", `table:storage.config"; DROP TABLE x; --`, "table:lenkwerk.follow_state", "table:storage.time_bound"}
	e.equal(skipKeys...)
	if n := e.count(`SELECT count(*) FROM storage.config WHERE key = $1 AND value::text = to_json($1::text)::text`, injection); n != 1 {
		t.Fatalf("the injection-looking config row is not there as data (%d rows)", n)
	}
	// Fields that are no columns are left out (a column the source added
	// that the copy lacks).
	if n := e.count(`SELECT count(*) FROM storage.config WHERE to_jsonb(config) = '{"id": 21, "key": "evil", "value": 1}'`); n != 1 {
		t.Fatal("/Config/evil was not applied without its extra fields")
	}
	if n := e.count(`SELECT count(*) FROM storage.dimension WHERE id = 7 OR (ordinality = 0 AND fieldname <> 'host')`); n != 0 {
		t.Fatal("the dimension breaking the ordinality was applied")
	}
	if n := e.count(`SELECT count(*) FROM storage.index`); n != 2 {
		t.Fatalf("storage.index has %d rows", n)
	}
	if n := e.count(`SELECT count(*) FROM pg_catalog.pg_authid WHERE rolname = 'postgres' AND rolsuper`); n != 1 {
		t.Fatal("pg_authid changed")
	}
	if got, want := e.checkpoint(), e.storeRevision(); got != want {
		t.Fatalf("checkpoint %d, store %d", got, want)
	}
	logs := e.logs.String()
	for _, want := range []string{
		`table \"storage\".\"nope\" does not exist in the local copy`,
		"is in schema pg_catalog, which lenkwerk follow never writes",
		"is in schema lenkwerk, which lenkwerk follow never writes",
		`has no column \"nope\"`,
		"is not a JSON object",
		`has the key columns of \"/Config/other\"`,
		"bad escape",
		"has fields that are not columns of storage.config",
		"refused by the local table",
		"invalid input syntax for type integer",
		"not-null constraint",
		"revision applied op by op, checking deferred constraints after each",
		`duplicate key value violates unique constraint \"dimension_ordinality_key\"`,
		`no key template matches key \"/storage/evil/1\"`,
		`no key template matches key \"/Nope/1\"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
	if n := strings.Count(logs, `key \"/storage/evil/1\"`); n != 1 {
		t.Errorf("an unknown key was logged %d times, want once", n)
	}
	if s := e.f.Status(); s.Skipped < 10 {
		t.Errorf("Status().Skipped = %d", s.Skipped)
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs)
	}
	// Still following.
	e.apply(put("/Config/later", config(25, "later", 1)))
	e.caughtUp()
	e.equal(skipKeys...)

	// A good row turned bad in the store keeps its local row, also when a
	// compaction makes the follower reconcile.
	e.apply(kvdriver.Put("/Config/later", []byte(`"not a row"`)))
	e.caughtUp()
	e.stop()
	e.apply(put("/Config/after-compaction", config(27, "after-compaction", 1)))
	e.compact()
	e.start()
	e.caughtUp()
	e.equal(append(skipKeys, "/Config/later")...)
	if n := e.count(`SELECT count(*) FROM storage.config WHERE key = 'later'`); n != 1 {
		t.Fatal("reconcile deleted the row of a key whose store value is unusable")
	}
}

// A lost database connection ends the session; the next one resumes from
// the checkpoint.
func TestDatabaseReconnect(t *testing.T) {
	e := newFollowingEnv(t)
	if _, err := e.conn().Exec(e.ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	e.apply(put("/Config/x", config(3, "x", 1)), kvdriver.Delete("/Index/1/10"))
	e.caughtUp()
	e.equal()
	if logs := e.logs.String(); !strings.Contains(logs, "reconnecting") || !strings.Contains(logs, "resuming from checkpoint") {
		t.Fatalf("no reconnect:\n%s", logs)
	}
}

// An agent transaction larger than a store batch reaches the store in
// several revisions: a field before its index, an index deleted before its
// fields. Such changes wait (the checkpoint stays before them, across a
// restart too) until the rest arrives.
func TestSplitTransaction(t *testing.T) {
	e := newFollowingEnv(t)
	waitPending := func(n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for e.f.Status().Pending != n {
			if time.Now().After(deadline) {
				t.Fatalf("Pending = %d, want %d; logs:\n%s", e.f.Status().Pending, n, e.logs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The first half: a field of an index that is not there yet, and the
	// deletion of an index whose fields are still there.
	first := e.apply(put("/Index/5/50", field(50, 5, 0, "ts")), kvdriver.Delete("/Index/1"), put("/Config/x", config(3, "x", 1)))
	waitPending(2)
	if got := e.checkpoint(); got != first-1 {
		t.Fatalf("checkpoint %d with changes of revision %d pending", got, first)
	}
	if n := e.count(`SELECT count(*) FROM storage.config WHERE key = 'x'`); n != 1 {
		t.Fatal("the rest of the revision was not applied")
	}
	e.stop()
	e.start()
	waitPending(2)
	// The second half.
	e.apply(put("/Index/5", index(5, "by_ts", "brin")), kvdriver.Delete("/Index/1/10"), kvdriver.Delete("/Index/1/11"))
	e.caughtUp()
	e.equal()
	if s := e.f.Status(); s.Pending != 0 || s.Skipped != 0 {
		t.Fatalf("status %+v", s)
	}
	if !strings.Contains(e.logs.String(), "pending changes applied") {
		t.Fatalf("logs:\n%s", e.logs)
	}
}

// Table and column names are quoted as the catalog spells them, however
// odd; a configured table name that would be SQL is only ever a name.
func TestQuotedIdentifiers(t *testing.T) {
	const table = `odd "table"; DROP TABLE storage.config; --`
	e := newEnv(t, "", follow.Config{Templates: map[string]string{"storage." + table: `/Odd/{k"ey}`}})
	if err := migrationsUpCopy(e.ctx, e.local); err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn().Exec(e.ctx, `CREATE TABLE storage.`+pgx.Identifier{table}.Sanitize()+
		` ("k""ey" int PRIMARY KEY, "select" text, "a,b" json, "new" int, "t" int)`); err != nil {
		t.Fatal(err)
	}
	e.apply(put(`/Odd/1`, row{`k"ey`: 1, "select": "x'); --", "a,b": row{"z": 1}, "new": 2, "t": 3}))
	e.start()
	e.caughtUp()
	e.apply(put(`/Odd/2`, row{`k"ey`: 2, "select": "y", "a,b": nil, "new": 4, "t": 5}), put(`/Odd/1`, row{`k"ey`: 1, "select": "changed", "a,b": nil, "new": 2, "t": 3}))
	e.caughtUp()
	e.equal()
	e.apply(kvdriver.Delete("/Odd/1"))
	e.caughtUp()
	e.equal()
	if n := e.count(`SELECT count(*) FROM storage.` + pgx.Identifier{table}.Sanitize()); n != 1 {
		t.Fatalf("%d rows", n)
	}
	// Reconcile reads the local rows back.
	e.stop()
	e.apply(kvdriver.Delete("/Odd/2"), put(`/Odd/3`, row{`k"ey`: 3, "select": "z", "a,b": nil, "new": 4, "t": 5}))
	e.compact()
	e.start()
	e.caughtUp()
	e.equal()
	if s := e.f.Status(); s.Skipped != 0 {
		t.Fatalf("skipped %d; logs:\n%s", s.Skipped, e.logs)
	}
}

// A JSON null in a NOT NULL json column (servermap.server_map,
// config.value) is copied as the JSON null the source holds, both when
// listed at start and when watched: json_populate_record alone turns it
// into SQL NULL, which the column refuses.
func TestJSONNull(t *testing.T) {
	e := newEnv(t, "", follow.Config{})
	e.apply(baseline("")...)
	e.apply(put("/Config/listed", config(30, "listed", nil)))
	e.start()
	e.caughtUp()
	e.equal()
	e.apply(
		put("/Servermap", row{"id": 31, "server_map": nil}),
		put("/Config/watched", config(32, "watched", nil)),
		put("/Config/kvstore_type", config(1, "kvstore_type", nil)),
	)
	e.caughtUp()
	e.equal()
	if n := e.count(`SELECT count(*) FROM storage.config WHERE json_typeof(value) = 'null' AND key IN ('listed', 'watched', 'kvstore_type')`); n != 3 {
		t.Errorf("%d config values are JSON null, want 3", n)
	}
	if n := e.count(`SELECT count(*) FROM storage.servermap WHERE id = 31 AND json_typeof(server_map) = 'null'`); n != 1 {
		t.Errorf("servermap generation 31 with a JSON null: %d rows, want 1", n)
	}
	// A missing NOT NULL value is still refused, not turned into null.
	e.apply(kvdriver.Put("/Config/missing", []byte(`{"id": 33, "key": "missing"}`)))
	e.caughtUp()
	if n := e.count(`SELECT count(*) FROM storage.config WHERE key = 'missing'`); n != 0 {
		t.Errorf("a config row without a value was copied")
	}
	if s := e.f.Status(); s.Skipped != 1 {
		t.Fatalf("skipped %d changes, want 1 (the missing value); logs:\n%s", s.Skipped, e.logs)
	}
}

// A prefix that is no store key, or inside the agent's reserved subtree,
// is refused by New: the follower would list and watch it in vain, for
// ever.
func TestBadPrefix(t *testing.T) {
	store, err := kvdriver.Open(context.Background(), "mem://")
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, prefix := range []string{"/a/..", "/.", "/a\xff", "/.lenkwerk", "/a/.lenkwerk/b"} {
		if _, err := follow.New(follow.Config{DatabaseURL: "postgres://localhost/x", Store: store, Prefix: prefix}); err == nil || !strings.Contains(err.Error(), "prefix") {
			t.Errorf("prefix %q: %v, want an error naming the prefix", prefix, err)
		}
	}
}
