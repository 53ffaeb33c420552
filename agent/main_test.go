package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// env is one test's Lenkwerk database (provisioned by the migrations,
// with a slot name of its own: slots are cluster-wide), a store and an
// agent run.
type env struct {
	t     *testing.T
	url   string
	slot  string
	db    *pgx.Conn
	store *kvdriver.Store
	agent *Agent
	stop  func()
}

func randomName(prefix string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// newEnv provisions a database on the shared cluster (or on url when
// given) and opens a private mem store.
func newEnv(t *testing.T, url string) *env {
	t.Helper()
	if url == "" {
		url = pgtest.NewDatabase(t)
	}
	e := &env{t: t, url: url, slot: randomName("lw_t")}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := migrations.Up(ctx, url, migrations.Options{Slot: e.slot}); err != nil {
		t.Fatalf("migrations: %v", err)
	}
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	e.db = db
	store, err := mem.Open(ctx, mem.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	e.store = store
	return e
}

// config is the agent configuration tests use: fast status updates and
// polls, short backoff.
func (e *env) config() Config {
	return Config{
		DatabaseURL:    e.url,
		Store:          e.store,
		Slot:           e.slot,
		Logger:         testLogger(e.t),
		StatusInterval: 200 * time.Millisecond,
		PollInterval:   300 * time.Millisecond,
		ApplyTimeout:   2 * time.Second,
		StoreRetry:     time.Second,
		MinBackoff:     50 * time.Millisecond,
		MaxBackoff:     500 * time.Millisecond,
	}
}

// newStreamingEnv is newEnv with the default tables seeded and mirrored
// by a running agent (e.agent) of the default config.
func newStreamingEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t, "")
	e.seed()
	e.run(e.config())
	e.converged(converge.Options{})
	return e
}

// start runs an agent with cfg until the test ends or e.stop is called.
func (e *env) start(cfg Config) *Agent {
	e.t.Helper()
	return e.startAgent(newAgent(e.t, cfg))
}

func (e *env) startAgent(a *Agent) *Agent {
	e.t.Helper()
	e.agent = a
	e.stop = runAgent(e.t, "agent", a)
	e.t.Cleanup(e.stop)
	return a
}

// newAgent is New(cfg); an error fails the test.
func newAgent(t *testing.T, cfg Config) *Agent {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// runAgent runs a in the background until stop is called: stop cancels
// Run and waits for it (30 s at the most); Run returning an error, or not
// returning, fails the test. Calls of stop after the first do nothing.
func runAgent(t *testing.T, name string, a *Agent) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	return func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run returned %v after cancel, want nil", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("%s: Run did not return within 30s of cancel", name)
		}
	}
}

// run starts an agent and waits until it streams (the initial sync is done).
func (e *env) run(cfg Config) *Agent {
	e.t.Helper()
	a := e.start(cfg)
	waitFor(e.t, "streaming", 30*time.Second, func() bool { return a.Status().Streaming })
	return a
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// converged waits until the store mirrors the database.
func (e *env) converged(opts converge.Options) {
	e.t.Helper()
	if opts.Publication == "" {
		opts.Publication = DefaultPublication
	}
	if d, err := converge.Wait(context.Background(), converge.URL(e.url), e.store, opts, 30*time.Second); err != nil {
		st := e.agent.Status()
		e.t.Fatalf("%v\n(agent: checkpoint %s, confirmed %s, streaming %v, err %v)\n%s", err, st.Checkpoint, st.Confirmed, st.Streaming, st.Err, d)
	}
}

// waitFor polls cond until it holds, failing the test when timeout
// passes first.
var waitFor = testutil.WaitFor

func (e *env) get(key string) (string, bool) {
	e.t.Helper()
	kv, err := e.store.Get(context.Background(), key)
	if errors.Is(err, kvdriver.ErrNotFound) {
		return "", false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return string(kv.Value), true
}

func (e *env) checkpoint() Checkpoint {
	e.t.Helper()
	ck, ok, err := ReadCheckpoint(context.Background(), e.store, "", e.slot)
	if err != nil || !ok {
		e.t.Fatalf("checkpoint: %v, found %v", err, ok)
	}
	return ck
}

func jsonField(t *testing.T, v, field string) string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(v), &m); err != nil {
		t.Fatalf("%s: %v", v, err)
	}
	return string(m[field])
}

// testLogger logs to the test at debug level when LENKWERK_TEST_LOG is
// set, else only warnings and errors.
func testLogger(t *testing.T) *slog.Logger {
	lvl := slog.LevelWarn
	if os.Getenv("LENKWERK_TEST_LOG") != "" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: lvl}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// asUser is databaseURL logged in as user.
func asUser(t *testing.T, databaseURL, user string) string {
	t.Helper()
	u, err := url.Parse(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}
