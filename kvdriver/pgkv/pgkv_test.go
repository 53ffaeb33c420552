package pgkv_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/kvtest"
	"github.com/bagger/lenkwerk/kvdriver/pgkv"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// withParams adds driver parameters to a database URL.
func withParams(dbURL string, params ...string) string {
	u, err := url.Parse(dbURL)
	if err != nil {
		panic(err)
	}
	q := u.Query()
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	// pgx reads "%20", not "+", as a space.
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// openStore opens a store through the registry, as the agent does, and
// closes it when the test ends.
func openStore(t testing.TB, rawURL string) *kvdriver.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := kvdriver.Open(ctx, rawURL)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// connect opens a plain connection (the test's own SQL), closed when the
// test ends.
func connect(t testing.TB, dbURL string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// collector drains a watch and lets the test wait for a revision.
type collector struct {
	mu     sync.Mutex
	events []kvdriver.Event
	resps  []kvdriver.WatchResponse
	rev    int64
	err    error
	done   chan struct{}
	change chan struct{}
}

func collect(ch <-chan kvdriver.WatchResponse) *collector {
	c := &collector{done: make(chan struct{}), change: make(chan struct{}, 1)}
	go func() {
		defer close(c.done)
		for r := range ch {
			c.mu.Lock()
			c.resps = append(c.resps, r)
			c.events = append(c.events, r.Events...)
			c.rev = max(c.rev, r.Revision)
			if r.Err != nil {
				c.err = r.Err
			}
			c.mu.Unlock()
			select {
			case c.change <- struct{}{}:
			default:
			}
		}
	}()
	return c
}

// until waits until the watch has delivered rev (or ended, or timed out).
func (c *collector) until(t testing.TB, rev int64, timeout time.Duration) []kvdriver.Event {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		got, err, evs := c.rev, c.err, append([]kvdriver.Event(nil), c.events...)
		c.mu.Unlock()
		if got >= rev {
			return evs
		}
		if err != nil {
			t.Fatalf("watch ended with %v before revision %d (at %d)", err, rev, got)
		}
		select {
		case <-c.change:
		case <-c.done:
			c.mu.Lock()
			got = c.rev
			c.mu.Unlock()
			if got < rev {
				t.Fatalf("watch closed at revision %d, before %d", got, rev)
			}
		case <-deadline.C:
			t.Fatalf("watch did not reach revision %d within %s (at %d, %d events)", rev, timeout, got, len(evs))
		}
	}
}

// checkSequence verifies events are exactly revisions from+1..to, each
// once, in order, one event per revision except where batch says more.
func checkSequence(t testing.TB, evs []kvdriver.Event, from, to int64) {
	t.Helper()
	next := from + 1
	for i, ev := range evs {
		if i > 0 && ev.Revision == evs[i-1].Revision {
			continue // same batch
		}
		if ev.Revision != next {
			t.Fatalf("event %d (%s %s): revision %d, want %d (gap, repeat or reorder)", i, ev.Type, ev.Key, ev.Revision, next)
		}
		next++
	}
	if next != to+1 {
		t.Fatalf("events end at revision %d, want %d", next-1, to)
	}
}

func TestOpenCreatesSchemaAndRoundTrips(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	s := openStore(t, withParams(dbURL, "schema", "MyKV"))
	ctx := ctxT(t)
	// Values come back byte for byte: no jsonb normalization.
	val := []byte(`{ "b" : 1,  "a":[1.50, "\u00e9"] }`)
	rev, err := s.Put(ctx, "/a/b", val)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := s.Get(ctx, "/a/b")
	if err != nil {
		t.Fatal(err)
	}
	if string(kv.Value) != string(val) || kv.ModRevision != rev {
		t.Fatalf("Get = %s @%d, want %s @%d", kv.Value, kv.ModRevision, val, rev)
	}
	// Deleting an absent key takes no revision.
	if r, err := s.Delete(ctx, "/nope"); err != nil || r != rev {
		t.Fatalf("Delete absent = %d, %v; want %d, nil", r, err, rev)
	}
	if r, err := s.Apply(ctx, []kvdriver.Op{kvdriver.Delete("/nope"), kvdriver.Delete("/nope2")}); err != nil || r != rev {
		t.Fatalf("Apply of absent deletes = %d, %v; want %d, nil", r, err, rev)
	}
	conn := connect(t, dbURL)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM "MyKV".kv_log`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("change log rows = %d, %v; want 1", n, err)
	}
	// Our migrations table lives in our schema; Lenkwerk's is untouched.
	var version int
	if err := conn.QueryRow(ctx, `SELECT version FROM "MyKV".pgkv_schema_migrations`).Scan(&version); err != nil || uint(version) != pgkv.SchemaVersion {
		t.Fatalf("pgkv_schema_migrations version = %d, %v; want %d", version, err, pgkv.SchemaVersion)
	}
	var other bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('public.schema_migrations') IS NOT NULL`).Scan(&other); err != nil || other {
		t.Fatalf("public.schema_migrations exists = %t, %v; pgkv must not create it", other, err)
	}
	// A second Open on a migrated schema, and one with migrate=false, work.
	openStore(t, withParams(dbURL, "schema", "MyKV"))
	s3 := openStore(t, withParams(dbURL, "schema", "MyKV", "migrate", "false"))
	if kv, err := s3.Get(ctx, "/a/b"); err != nil || kv.ModRevision != rev {
		t.Fatalf("Get through migrate=false store = %v, %v", kv, err)
	}
}

func TestOpenWithoutMigrationsFailsClearly(t *testing.T) {
	dbURL := pgtest.NewDatabase(t)
	_, err := kvdriver.Open(ctxT(t), withParams(dbURL, "migrate", "false"))
	if err == nil || !strings.Contains(err.Error(), "migrate=true") {
		t.Fatalf("Open(migrate=false) on an empty database: %v; want an error telling to migrate", err)
	}
}

// FuzzParseURL checks that ParseURL never panics, that its errors wrap
// kvdriver.ErrInvalidURL, and that a password put into the URL (user info
// and a password query parameter) never appears in an error. Seeds are in
// testdata/fuzz/FuzzParseURL.
func FuzzParseURL(f *testing.F) {
	kvtest.FuzzURLParser(f, "postgres", func(raw string) error {
		_, err := pgkv.ParseURL(raw)
		return err
	})
}

func TestParseURL(t *testing.T) {
	c, err := pgkv.ParseURL("postgresql://u:secret@db:5433/kv?sslmode=disable&schema=kv2&migrate=false&poll-interval=250ms&history-revisions=10&history-age=0s&max-value-bytes=2048&application_name=x")
	if err != nil {
		t.Fatal(err)
	}
	if c.Schema != "kv2" || c.Migrate || c.PollInterval != 250*time.Millisecond || c.HistoryRevisions != 10 || c.HistoryAge != 0 || c.Limits.MaxValueBytes != 2048 {
		t.Fatalf("ParseURL = %+v", c)
	}
	// Driver parameters are gone, pgx's stay.
	if want := "postgresql://u:secret@db:5433/kv?sslmode=disable&application_name=x"; c.ConnString != want {
		t.Fatalf("ConnString = %q, want %q", c.ConnString, want)
	}
	// Other parameters are passed on exactly as written.
	if o, err := pgkv.ParseURL("postgres://db/kv?options=-c%20search_path%3Dx&schema=s"); err != nil || o.ConnString != "postgres://db/kv?options=-c%20search_path%3Dx" {
		t.Fatalf("ParseURL kept %q, %v", o.ConnString, err)
	}
	d, err := pgkv.ParseURL("postgres://db/kv")
	if err != nil {
		t.Fatal(err)
	}
	if d.Schema != pgkv.DefaultSchema || !d.Migrate || !d.Listen || d.Limits.MaxValueBytes != pgkv.DefaultMaxValueBytes || d.Limits.MaxBatchOps != pgkv.DefaultMaxBatchOps {
		t.Fatalf("defaults = %+v", d)
	}

	for _, tc := range []struct{ url, want string }{
		{"postgres://u:secret@db/kv?schema=1abc", "not an identifier"},
		{"postgres://u:secret@db/kv?schema=a%3Bdrop", "not an identifier"},
		{`postgres://u:secret@db/kv?schema=a"b`, "not an identifier"},
		{"postgres://u:secret@db/kv?schema=pg_catalog", "reserved"},
		{"postgres://u:secret@db/kv?schema=" + strings.Repeat("a", 49), "longer than"},
		{"postgres://u:secret@db/kv?migrate=maybe", "migrate"},
		{"postgres://u:secret@db/kv?poll-interval=fast", "poll-interval"},
		{"postgres://u:secret@db/kv?poll-interval=0s", "poll-interval"},
		{"postgres://u:secret@db/kv?max-batch-ops=-1", "max-batch-ops"},
		{"postgres://u:secret@db/kv?lenkwerk-schema=x", `unknown parameter "lenkwerk-schema"`},
		{"postgres://u:secret@db/kv?lenkwerk_mode=x", `unknown parameter "lenkwerk_mode"`},
		{"postgres://u:secret@db/kv?schema=a&schema=b", "2 times"},
		{"etcd://u:secret@db/kv", "scheme"},
	} {
		_, err := pgkv.ParseURL(tc.url)
		if !errors.Is(err, kvdriver.ErrInvalidURL) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseURL(%q) = %v; want ErrInvalidURL mentioning %q", tc.url, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseURL(%q) error shows the password: %v", tc.url, err)
		}
	}
}

func TestOpenErrorsHidePassword(t *testing.T) {
	ctx := ctxT(t)
	// Nothing listens on port 1; bad sslmode is a pgx parse error.
	for _, raw := range []string{
		"postgres://u:hunter2@127.0.0.1:1/kv?connect_timeout=2",
		"postgres://u:hunter2@127.0.0.1:1/kv?sslmode=bogus",
		"postgres://u:hunter2@127.0.0.1:1/kv?lenkwerk-x=1",
	} {
		_, err := kvdriver.Open(ctx, raw)
		if err == nil {
			t.Fatalf("Open(%s) succeeded", raw)
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open error shows the password: %v", err)
		}
	}
}

func TestListOrderAndPrefixes(t *testing.T) {
	s := openStore(t, pgtest.NewDatabase(t))
	ctx := ctxT(t)
	keys := []string{"/Index", "/Index/1", "/Index/10", "/Index/1/x", "/IndexField/1", "/Index-a", "/Index0", "/Indew", "/é", "/z"}
	for i, k := range keys {
		if _, err := s.Put(ctx, k, []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	got := func(prefix string) string {
		kvs, _, err := s.List(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		var ks []string
		for _, kv := range kvs {
			ks = append(ks, kv.Key)
		}
		return strings.Join(ks, " ")
	}
	if g, w := got("/Index"), "/Index /Index/1 /Index/1/x /Index/10"; g != w {
		t.Errorf("List(/Index) = %s, want %s", g, w)
	}
	if g, w := got("/"), "/Indew /Index /Index-a /Index/1 /Index/1/x /Index/10 /Index0 /IndexField/1 /z /é"; g != w {
		t.Errorf("List(/) = %s, want %s (byte order)", g, w)
	}
}

// TestConcurrentOpenMigratesOnce: stores opening at the same moment on an
// empty database race to create the schema and migrate; all succeed.
func TestConcurrentOpenMigratesOnce(t *testing.T) {
	dbURL := withParams(pgtest.NewDatabase(t), "schema", "racy")
	ctx := ctxT(t)
	errs := make(chan error, 8)
	stores := make(chan *kvdriver.Store, 8)
	for i := 0; i < 8; i++ {
		go func() {
			s, err := kvdriver.Open(ctx, dbURL)
			if err == nil {
				stores <- s
			}
			errs <- err
		}()
	}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Open: %v", err)
		}
	}
	close(stores)
	for s := range stores {
		if _, err := s.Put(ctx, "/x", []byte(`1`)); err != nil {
			t.Errorf("Put: %v", err)
		}
		s.Close()
	}
}

// TestOpenRefusesDirtySchema: a schema whose migration really failed halfway
// (dirty with no migration running) is refused with the way out, not used.
func TestOpenRefusesDirtySchema(t *testing.T) {
	plain := pgtest.NewDatabase(t)
	dbURL := withParams(plain, "schema", "halfway")
	ctx := ctxT(t)
	openStore(t, dbURL).Close()
	conn := connect(t, plain)
	if _, err := conn.Exec(ctx, `UPDATE halfway.pgkv_schema_migrations SET dirty = true`); err != nil {
		t.Fatal(err)
	}
	s, err := kvdriver.Open(ctx, dbURL)
	if err == nil {
		s.Close()
		t.Fatal("Open of a dirty schema succeeded")
	}
	if !strings.Contains(err.Error(), "dirty") || !strings.Contains(err.Error(), "force") {
		t.Fatalf("Open of a dirty schema: %v; want the dirty state and `migrate force` named", err)
	}
}

// TestReadAfterBackendsTerminated: after the server ended the pool's
// connections (a restart, pg_terminate_backend), the next Get and List
// succeed instead of failing once per dead pooled connection.
func TestReadAfterBackendsTerminated(t *testing.T) {
	plain := pgtest.NewDatabase(t)
	ctx := ctxT(t)
	s := openStore(t, withParams(plain, "listen", "false", "compact-interval", "0"))
	defer s.Close()
	if _, err := s.Put(ctx, "/dead/k", []byte(`1`)); err != nil {
		t.Fatal(err)
	}
	admin := connect(t, plain)
	for round := range 3 {
		// Use the pooled connections, then have the server end them.
		if _, _, err := s.List(ctx, "/dead"); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
			t.Fatal(err)
		}
		var err error
		if round%2 == 0 {
			_, _, err = s.List(ctx, "/dead")
		} else {
			_, err = s.Get(ctx, "/dead/k")
		}
		if err != nil {
			t.Fatalf("round %d: read after the backends were terminated: %v", round, err)
		}
	}
}
