package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/agent"
	"github.com/bagger/lenkwerk/integration/converge"
	"github.com/bagger/lenkwerk/integration/etcdtest"
	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/integration/testutil"
	"github.com/bagger/lenkwerk/kvdriver"
)

// TestFanOutBinary runs one agent process fanning out to etcd and pgkv:
// the second store's slot lw_agent_kv2 is created by the agent, each store
// has its own checkpoint and metrics, and an etcd outage holds back
// nothing of pgkv.
func TestFanOutBinary(t *testing.T) {
	t.Parallel() // waits mostly; private servers
	bin := lenkwerkBinary(t)
	ctx := context.Background()
	c, admin := migratedCluster(t, ctx, pgtest.Options{})
	db := connectLocal(t, ctx, admin)
	etcd := etcdtest.New(t)
	pgkvURL := c.NewDatabase(t)
	stores := map[string]*kvdriver.Store{}
	for name, raw := range map[string]string{"default": etcd.URL(), "kv2": pgkvURL} {
		s, err := kvdriver.Open(ctx, raw)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores[name] = s
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := db.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	start := time.Now()
	conv := func(name string) {
		t.Helper()
		defer func() { t.Logf("%v: store %s converged", time.Since(start).Round(time.Millisecond), name) }()
		if d, err := converge.Wait(ctx, converge.URL(admin), stores[name], converge.Options{Publication: agent.DefaultPublication}, 40*time.Second); err != nil {
			t.Fatalf("store %s: %v\n%s", name, err, d)
		}
	}
	exec(`SELECT storage.register_pg_instance('db1', 5432, 'bagger')`)
	p := startAgentProcess(t, bin, "fanout", "--database-url", withURLUser(t, admin, "lenkwerk_agent"), "--kv", etcd.URL(), "--kv", "kv2="+pgkvURL,
		"--status-interval", "1s", "--metrics-addr", "127.0.0.1:0")
	conv("default")
	conv("kv2")
	for name, slot := range map[string]string{"default": agent.DefaultSlot, "kv2": agent.StoreSlot(agent.DefaultSlot, "kv2")} {
		if _, ok, err := agent.ReadCheckpoint(ctx, stores[name], "", slot); err != nil || !ok {
			t.Fatalf("store %s: checkpoint of slot %s: found %v, %v", name, slot, ok, err)
		}
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('lw_agent', 'lw_agent_kv2')`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d slots, %v; want lw_agent and lw_agent_kv2", n, err)
	}

	if err := etcd.Stop(); err != nil {
		t.Fatal(err)
	}
	exec(`SELECT storage.save_config('during_etcd_outage', '1')`)
	conv("kv2")
	metrics := p.metricsURL(t)
	testutil.WaitFor(t, "/readyz naming the failing store", 30*time.Second, func() bool {
		code, body := testutil.HTTPGet(t, metrics+"/readyz")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "store default") && !strings.Contains(body, "store kv2")
	})
	if err := etcd.Start(ctx); err != nil {
		t.Fatal(err)
	}
	exec(`SELECT storage.save_config('after_etcd_outage', '2')`)
	conv("default")
	conv("kv2")
	_, text := testutil.HTTPGet(t, metrics+"/metrics")
	for _, store := range []string{"default", "kv2"} {
		if v, ok := testutil.MetricValue(text, "lenkwerk_agent_transactions_applied_total", `store="`+store+`"`); !ok || v < 1 {
			t.Errorf("lenkwerk_agent_transactions_applied_total{store=%q} = %v (found %v), want >= 1", store, v, ok)
		}
	}
	if v, _ := testutil.MetricValue(text, "lenkwerk_agent_errors_total", `store="default"`, `kind="store"`); v < 1 {
		t.Errorf(`lenkwerk_agent_errors_total{store="default",kind="store"} = %v, want >= 1`, v)
	}
	if code := p.terminate(30 * time.Second); code != 0 {
		t.Errorf("SIGTERM: exit code %d, want 0", code)
	}
}
