package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// logBuffer keeps an agent's log lines (and shows them in the test log).
type logBuffer struct {
	t *testing.T
	testutil.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.Buffer.Write(p)
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// lines returns the lines containing substr.
func (l *logBuffer) lines(substr string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// limitStore gives e a store that refuses values over 2000 bytes, fewer
// than the schema allows, closed when the test ends.
func (e *env) limitStore(ctx context.Context) {
	e.t.Helper()
	store, err := mem.Open(ctx, mem.Config{Limits: kvdriver.Limits{MaxValueBytes: 2000}})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { store.Close() })
	e.store = store
}

// metricsConfig is e's agent configuration with metrics on a registry of
// their own, returned for reading them.
func (e *env) metricsConfig() (Config, *prometheus.Registry) {
	e.t.Helper()
	reg := prometheus.NewRegistry()
	met, err := NewMetrics(reg)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := e.config()
	cfg.Metrics = met
	return cfg, reg
}

// A store with smaller limits than the schema's: a row the database
// accepts but the store refuses blocks the agent, in the initial copy and
// in the stream. Blocked, the agent says so everywhere an operator looks
// (/readyz with the error and the way out, the role metric, lag in
// seconds and bytes growing, errors of kind "value"), logs the error once
// however often it retries, and goes on, without a restart, once the
// exact change is skipped (AddSkip, what `lenkwerk skip` writes).
func TestBlockedChangeAndSkip(t *testing.T) {
	e := newEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e.limitStore(ctx)
	big := `'"` + strings.Repeat("x", 3000) + `"'`
	e.exec(`INSERT INTO storage.config (key, value) VALUES ('copied_big', ` + big + `), ('copied', '1')`)

	logs := &logBuffer{t: t}
	cfg, reg := e.metricsConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a := e.start(cfg)
	blockedOn := func(key string) *ValueError {
		t.Helper()
		var ve *ValueError
		waitFor(t, "the agent to block on "+key, 30*time.Second, func() bool {
			ve = a.Status().Blocked
			return ve != nil && ve.Key == key
		})
		return ve
	}

	// The initial copy.
	ve := blockedOn("/Config/copied_big")
	if ve.CommitLSN != 0 || ve.Table != "storage.config" || !errors.Is(ve, kvdriver.ErrTooLarge) {
		t.Fatalf("blocked on %+v", ve)
	}
	if err := AddSkip(ctx, e.store, "", e.slot, ve.Skip()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the initial copy", 30*time.Second, func() bool { return a.Status().Streaming && a.Status().Blocked == nil })
	if _, ok := e.get("/Config/copied"); !ok {
		t.Fatal("/Config/copied not copied")
	}
	if _, ok := e.get("/Config/copied_big"); ok {
		t.Fatal("/Config/copied_big written")
	}

	// The stream: a change held back, and the one after it.
	e.exec(`INSERT INTO storage.config (key, value) VALUES ('big', ` + big + `)`)
	e.exec(`INSERT INTO storage.config (key, value) VALUES ('after', '1')`)
	ve = blockedOn("/Config/big")
	if ve.CommitLSN == 0 || ve.CommitTime.IsZero() {
		t.Fatalf("blocked on %+v, want its transaction", ve)
	}
	way := "lenkwerk skip --slot " + e.slot + " --table storage.config --lsn " + ve.CommitLSN.String() + " --key-sha256 " + KeyHash("/Config/big")
	ready, why := a.Ready(time.Hour)
	if ready || !strings.Contains(why, "blocked since") || !strings.Contains(why, `table storage.config, key "/Config/big"`) ||
		!strings.Contains(why, "value is 3") || !strings.Contains(why, way) {
		t.Errorf("Ready = %v, %q; want the error and %q", ready, why, way)
	}
	role := func(r string) float64 { return metric(t, reg, "lenkwerk_agent_role", `role="`+r+`"`) }
	if role("blocked") != 1 || role("standby") != 0 || role("active") != 0 || role("down") != 0 {
		t.Errorf("role metric: blocked %v standby %v active %v down %v; want blocked only", role("blocked"), role("standby"), role("active"), role("down"))
	}
	// Retried several times, logged once (and briefly).
	waitFor(t, "three attempts", 30*time.Second, func() bool {
		return metric(t, reg, "lenkwerk_agent_errors_total", `kind="value"`) >= 3
	})
	if n := len(logs.lines(`"a change cannot be mirrored`)); n != 2 { // the copy's and the stream's
		t.Errorf("the blocking error was logged %d times, want once for the copy and once for the stream", n)
	}
	for _, line := range logs.lines("/Config/big") {
		if len(line) > 2000 {
			t.Errorf("log line of %d bytes", len(line))
		}
	}
	if got := logs.lines("agent session failed"); len(got) > 0 {
		t.Errorf("blocked, the agent logs generic failures too: %q", got)
	}
	// The lag grows while the agent is stuck: in seconds from the
	// change's commit, in bytes with the server's WAL.
	// Whenever it is scraped, between attempts too, lag_seconds counts
	// from the blocked change's commit.
	for i := 0; i < 100; i++ {
		want := time.Since(ve.CommitTime).Seconds() - 0.5
		if got := metric(t, reg, "lenkwerk_agent_replication_lag_seconds"); got < want {
			t.Fatalf("lag_seconds = %v while blocked on a change committed %v ago", got, time.Since(ve.CommitTime))
		}
		time.Sleep(20 * time.Millisecond)
	}
	before := a.Status().LagBytes
	e.exec(`SELECT pg_logical_emit_message(false, 'lenkwerk-test', repeat('x', 100000))`)
	waitFor(t, "lag_bytes to grow with the server's WAL", 30*time.Second, func() bool {
		return metric(t, reg, "lenkwerk_agent_replication_lag_bytes") >= float64(before+100000)
	})
	if _, ok := e.get("/Config/after"); ok {
		t.Fatal("a change after the blocked one reached the store")
	}

	// The way out, while the agent runs.
	if err := AddSkip(ctx, e.store, "", e.slot, ve.Skip()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the change after the skipped one", 30*time.Second, func() bool { _, ok := e.get("/Config/after"); return ok })
	waitFor(t, "the agent to be ready", 30*time.Second, func() bool { ok, _ := a.Ready(time.Hour); return ok })
	if _, ok := e.get("/Config/big"); ok {
		t.Error("the skipped change reached the store")
	}
	if v := metric(t, reg, "lenkwerk_agent_changes_skipped_total"); v < 2 {
		t.Errorf("changes_skipped_total = %v, want 2 (or more, replayed)", v)
	}
	if role("active") != 1 || role("blocked") != 0 {
		t.Errorf("role after the skip: active %v blocked %v", role("active"), role("blocked"))
	}
	for _, want := range []string{"skipping a change that cannot be mirrored", "mirroring again"} {
		if len(logs.lines(want)) == 0 {
			t.Errorf("no log line %q", want)
		}
	}
	// Fixed at the source, the row is mirrored as usual.
	e.exec(`UPDATE storage.config SET value = '"small"' WHERE key = 'big'`)
	waitFor(t, "the fixed row", 30*time.Second, func() bool { v, ok := e.get("/Config/big"); return ok && strings.Contains(v, "small") })
}

// An instruction for another change (another key, or another
// transaction) does not release the agent.
func TestSkipOnlyThatChange(t *testing.T) {
	e := newEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e.limitStore(ctx)
	cfg, reg := e.metricsConfig()
	a := e.run(cfg)
	e.exec(`INSERT INTO storage.config (key, value) VALUES ('big', '"` + strings.Repeat("x", 3000) + `"')`)
	var ve *ValueError
	waitFor(t, "the agent to block", 30*time.Second, func() bool { ve = a.Status().Blocked; return ve != nil })
	other := ve.Skip()
	other.KeySHA256 = KeyHash("/Config/other")
	earlier := ve.Skip()
	earlier.CommitLSN = (ve.CommitLSN - 1).String()
	for _, sk := range []Skip{other, earlier} {
		if err := AddSkip(ctx, e.store, "", e.slot, sk); err != nil {
			t.Fatal(err)
		}
	}
	since := a.Status().BlockedSince
	attempts := metric(t, reg, "lenkwerk_agent_errors_total", `kind="value"`)
	waitFor(t, "two more attempts", 30*time.Second, func() bool {
		return metric(t, reg, "lenkwerk_agent_errors_total", `kind="value"`) >= attempts+2
	})
	if st := a.Status(); st.Blocked == nil || !st.BlockedSince.Equal(since) {
		t.Fatalf("released by an instruction for another change: %+v", st)
	}
	if _, ok := e.get("/Config/big"); ok {
		t.Fatal("the change reached the store")
	}
}

// metric is the value of the first sample of name with labels in reg
// (0 when there is none).
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	v, _ := testutil.MetricValue(rec.Body.String(), name, labels...)
	return v
}

// An agent that cannot connect is not a standby: /readyz shows the error
// and the role metric says down (a standby is one that waits while
// another agent holds the slot's lock).
func TestNotConnectedIsNotStandby(t *testing.T) {
	e := newEnv(t, "")
	cfg, reg := e.metricsConfig()
	cfg.DatabaseURL = strings.Replace(e.url, "/t_", "/nosuchdb_", 1)
	a := e.start(cfg)
	waitFor(t, "a failed session", 30*time.Second, func() bool { return a.Status().Err != nil })
	rec := httptest.NewRecorder()
	Handler(reg, func() []string { return NotReady(0, a) }).ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if body := rec.Body.String(); rec.Code != 503 || !strings.Contains(body, "not connected: ") || !strings.Contains(body, "nosuchdb_") || strings.Contains(body, "standby:") {
		t.Errorf("/readyz = %d %q, want 503 with the connection error", rec.Code, body)
	}
	if down, standby := metric(t, reg, "lenkwerk_agent_role", `role="down"`), metric(t, reg, "lenkwerk_agent_role", `role="standby"`); down != 1 || standby != 0 {
		t.Errorf("role metric: down %v, standby %v; want down", down, standby)
	}
}

// A table added to the publication later, whose row gives no key (an
// empty key column, which no constraint of Lenkwerk's guards): a mapper
// error of kind "value", which blocks the agent until skipped by the key
// it could not build ("").
func TestAddedTableKeyErrorBlocks(t *testing.T) {
	e := newEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, reg := e.metricsConfig()
	a := e.run(cfg)
	e.exec(`CREATE TABLE public.extra (name text PRIMARY KEY, v int)`)
	e.exec(`ALTER TABLE public.extra REPLICA IDENTITY FULL`)
	e.exec(`ALTER PUBLICATION ` + DefaultPublication + ` ADD TABLE public.extra`)
	e.exec(`INSERT INTO public.extra VALUES ('a', 1)`)
	waitFor(t, "the added table", 30*time.Second, func() bool { _, ok := e.get("/public/extra/a"); return ok })
	e.exec(`INSERT INTO public.extra VALUES ('', 2)`)
	e.exec(`INSERT INTO public.extra VALUES ('b', 3)`)
	var ve *ValueError
	waitFor(t, "the agent to block", 30*time.Second, func() bool { ve = a.Status().Blocked; return ve != nil })
	if ve.Table != "public.extra" || ve.Key != "" || !strings.Contains(ve.Error(), "invalid key segment") {
		t.Fatalf("blocked on %v", ve)
	}
	waitFor(t, "errors of kind value", 30*time.Second, func() bool {
		return metric(t, reg, "lenkwerk_agent_errors_total", `kind="value"`) >= 1
	})
	if v := metric(t, reg, "lenkwerk_agent_errors_total", `kind="other"`); v != 0 {
		t.Errorf("errors of kind other: %v", v)
	}
	if err := AddSkip(ctx, e.store, "", e.slot, ve.Skip()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the row after the skipped one", 30*time.Second, func() bool { _, ok := e.get("/public/extra/b"); return ok })
}
