package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
	"github.com/prometheus/client_golang/prometheus"
)

// The metrics and health endpoints, scraped over HTTP from a running agent:
// counters follow the transactions, the role and readiness follow the
// session, and a failing store shows as errors and reconnects by kind.
func TestMetricsAndHealth(t *testing.T) {
	e := newEnv(t, "")
	e.seed()
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.config()
	cfg.Metrics = m
	cfg.Name = "main"
	writes := &countingStore{Driver: driverOf(cfg.Store)}
	cfg.Store = kvdriver.NewStore("counting", writes)
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(reg, func() []string { return NotReady(0, a) }))
	defer srv.Close()

	if code, body := testutil.HTTPGet(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || strings.Count(strings.TrimSpace(body), "\n") != 0 {
		t.Errorf("/readyz before Run: %d %q, want 503 and one line", code, body)
	}
	e.startAgent(a)
	waitFor(t, "streaming", 30*time.Second, func() bool { return a.Status().Streaming })
	e.converged(converge.Options{})
	const n = 20
	for i := range n {
		e.exec(`INSERT INTO storage.config (key, value) SELECT $1 || '_' || g, '1' FROM generate_series(1, 3) g`, fmt.Sprint("m", i))
	}
	e.converged(converge.Options{})
	if code, body := testutil.HTTPGet(t, srv.URL+"/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	waitFor(t, "/readyz 200", 10*time.Second, func() bool { code, _ := testutil.HTTPGet(t, srv.URL+"/readyz"); return code == http.StatusOK })

	_, text := testutil.HTTPGet(t, srv.URL+"/metrics")
	store := `store="main"`
	for _, c := range []struct {
		name   string
		labels []string
		check  func(float64) bool
		want   string
	}{
		{"lenkwerk_agent_transactions_applied_total", nil, func(v float64) bool { return v == n }, fmt.Sprint(n)},
		{"lenkwerk_agent_rows_applied_total", nil, func(v float64) bool { return v == 3*n }, fmt.Sprint(3 * n)},
		{"lenkwerk_agent_apply_latency_seconds_count", nil, func(v float64) bool { return v == n }, fmt.Sprint(n)},
		// Small transactions may share a store write (group commit):
		// every write the agent made is observed, each once.
		{"lenkwerk_agent_store_write_duration_seconds_count", nil, func(v float64) bool { w := writes.applies.Load(); return w > 0 && v == float64(w) }, fmt.Sprint(writes.applies.Load(), " (the store's count)")},
		{"lenkwerk_agent_role", []string{`role="active"`}, func(v float64) bool { return v == 1 }, "1"},
		{"lenkwerk_agent_role", []string{`role="standby"`}, func(v float64) bool { return v == 0 }, "0"},
		{"lenkwerk_agent_replication_lag_bytes", nil, func(v float64) bool { return v >= 0 }, ">= 0"},
		{"lenkwerk_agent_replication_lag_seconds", nil, func(v float64) bool { return v >= 0 && v < 10 }, "in [0, 10)"},
		{"lenkwerk_agent_retained_wal_bytes", nil, func(v float64) bool { return v >= 0 }, ">= 0"},
		// Every kind's series exists before its first error.
		{"lenkwerk_agent_errors_total", []string{`kind="fenced"`}, func(v float64) bool { return v == 0 }, "0"},
		{"lenkwerk_agent_reconnects_total", []string{`cause="store"`}, func(v float64) bool { return v == 0 }, "0"},
	} {
		v, ok := testutil.MetricValue(text, c.name, append(c.labels, store)...)
		if !ok || !c.check(v) {
			t.Errorf("%s%v = %v (found %v), want %s", c.name, c.labels, v, ok, c.want)
		}
	}

	// Idle and caught up: no lag.
	waitFor(t, "lag 0 when idle", 20*time.Second, func() bool {
		_, text := testutil.HTTPGet(t, srv.URL+"/metrics")
		b, _ := testutil.MetricValue(text, "lenkwerk_agent_replication_lag_bytes", store)
		s, _ := testutil.MetricValue(text, "lenkwerk_agent_replication_lag_seconds", store)
		return b == 0 && s == 0
	})

	// A closed store: every write fails; the session ends with a store
	// error and reconnects.
	cfg.Store.Close()
	e.exec(`SELECT storage.save_config('after_close', '1')`)
	waitFor(t, "a store reconnect", 30*time.Second, func() bool {
		_, text := testutil.HTTPGet(t, srv.URL+"/metrics")
		v, _ := testutil.MetricValue(text, "lenkwerk_agent_reconnects_total", store, `cause="store"`)
		return v >= 1
	})
	_, text = testutil.HTTPGet(t, srv.URL+"/metrics")
	if v, _ := testutil.MetricValue(text, "lenkwerk_agent_errors_total", store, `kind="store"`); v < 1 {
		t.Errorf("lenkwerk_agent_errors_total{kind=store} = %v, want >= 1", v)
	}
	if code, body := testutil.HTTPGet(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "store main") {
		t.Errorf("/readyz with a closed store: %d %q, want 503 naming the store", code, body)
	}
}

// countingStore counts Apply calls.
type countingStore struct {
	kvdriver.Driver
	applies atomic.Int64
}

func (c *countingStore) Apply(ctx context.Context, ops []kvdriver.Op) (int64, error) {
	c.applies.Add(1)
	return c.Driver.Apply(ctx, ops)
}

// Two agents, each with its own metrics registry, in one process: no
// collision (the metrics are not on the global registry).
func TestMetricsRegistryPerAgent(t *testing.T) {
	for range 2 {
		reg := prometheus.NewRegistry()
		if _, err := NewMetrics(reg); err != nil {
			t.Fatal(err)
		}
	}
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Fatal("registering the metrics twice on one registry succeeded")
	}
}

// At info the agent logs nothing per row or per transaction; at debug one
// line per transaction.
func TestLogVolume(t *testing.T) {
	for _, lvl := range []slog.Level{slog.LevelInfo, slog.LevelDebug} {
		t.Run(lvl.String(), func(t *testing.T) {
			e := newEnv(t, "")
			var out testutil.Buffer
			cfg := e.config()
			cfg.Logger = slog.New(slog.NewJSONHandler(&out, &slog.HandlerOptions{Level: lvl}))
			a := e.run(cfg)
			e.converged(converge.Options{})
			before := strings.Count(out.String(), "\n")
			txns := a.Status().Transactions
			const n, rows = 25, 4
			for i := range n {
				e.exec(`INSERT INTO storage.config (key, value) SELECT $1 || '_' || g, '1' FROM generate_series(1, $2::int) g`, fmt.Sprint("row", i), rows)
			}
			e.converged(converge.Options{})
			waitFor(t, "the transactions applied", 10*time.Second, func() bool { return a.Status().Transactions-txns >= n })
			logs := out.String()
			lines := strings.Split(strings.TrimSpace(logs), "\n")[before:]
			if strings.Contains(logs, "row0_1") {
				t.Errorf("a row's key is in the log:\n%s", logs)
			}
			perTxn := strings.Count(strings.Join(lines, "\n"), `"msg":"transaction applied"`)
			switch lvl {
			case slog.LevelInfo:
				if len(lines) > 3 {
					t.Errorf("%d log lines at info during %d transactions of %d rows, want almost none:\n%s", len(lines), n, rows, strings.Join(lines, "\n"))
				}
			case slog.LevelDebug:
				if perTxn != n {
					t.Errorf("%d \"transaction applied\" lines at debug for %d transactions, want one each", perTxn, n)
				}
			}
		})
	}
}

// Fan-out: two stores, each with its own agent, slot and checkpoint. One
// store's outage holds back no other: changes keep reaching the second
// while the first is down, and both converge once it is back. The second
// store's slot is created by its agent (initial sync).
func TestFanOut(t *testing.T) {
	e := newEnv(t, "")
	e.seed()
	srv := etcdtest.New(t)
	e.useStore(t, srv.URL())
	etcdStore := e.store
	memStore, err := mem.Open(context.Background(), mem.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { memStore.Close() })

	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	cfgA := e.config()
	cfgA.Metrics, cfgA.Name = m, "etcd"
	cfgB := e.config()
	cfgB.Metrics, cfgB.Name, cfgB.Store, cfgB.Slot = m, "mem", memStore, StoreSlot(e.slot, "mem")
	a := e.run(cfgA)
	b2 := &env{t: t, url: e.url, slot: cfgB.Slot, db: e.db, store: memStore}
	b := b2.run(cfgB)

	conv := func(store *kvdriver.Store, ag *Agent, what string) {
		t.Helper()
		if d, err := converge.Wait(context.Background(), converge.URL(e.url), store, converge.Options{Publication: DefaultPublication}, 30*time.Second); err != nil {
			t.Fatalf("%s: %v (agent err %v)\n%s", what, err, ag.Status().Err, d)
		}
	}
	conv(etcdStore, a, "etcd")
	conv(memStore, b, "mem")
	var exists bool
	if err := e.db.QueryRow(context.Background(), `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, cfgB.Slot).Scan(&exists); err != nil || !exists {
		t.Fatalf("slot %s of the second store: exists %v, %v", cfgB.Slot, exists, err)
	}

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		e.exec(`SELECT storage.save_config($1, '2')`, fmt.Sprint("during_outage_", i))
	}
	conv(memStore, b, "mem while etcd is down")
	if _, ok, _ := ReadCheckpoint(context.Background(), memStore, "", cfgB.Slot); !ok {
		t.Fatal("no checkpoint of the second slot in the mem store")
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.exec(`SELECT storage.save_config('after_outage', '3')`)
	conv(etcdStore, a, "etcd after its outage")
	conv(memStore, b, "mem after the etcd outage")
	// Each store holds only its own slot's checkpoint.
	if _, ok, _ := ReadCheckpoint(context.Background(), etcdStore, "", cfgB.Slot); ok {
		t.Error("the etcd store has the mem store's checkpoint")
	}
}
