package agent

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/pgtest"
	"github.com/bagger/lenkwerk/kvdriver"
	"github.com/bagger/lenkwerk/kvdriver/mem"
	"github.com/bagger/lenkwerk/migrations"
	"github.com/jackc/pgx/v5"
)

// BenchmarkSyncStandbys measures what SyncStandbys costs in latency:
// two agents stream the same database (a slot and a store each), one
// without the option (the baseline), one waiting for a streaming standby.
// Each operation commits one storage.save_config and waits until both
// stores show it; the figures are commit→store latencies of the same
// commits, so the ratio compares like with like in one run.
// synchronous_commit=on: with pgtest's usual off a walsender (and the
// standby) sees a small commit only when the WAL writer flushes it.
func BenchmarkSyncStandbys(b *testing.B) {
	primary := pgtest.StartCluster(b, pgtest.Options{Settings: map[string]string{"synchronous_commit": "on"}})
	url := primary.NewDatabase(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slot := randomName("lw_b")
	if err := migrations.Up(ctx, url, migrations.Options{Slot: slot}); err != nil {
		b.Fatal(err)
	}
	primary.StartStandby(b)
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close(context.Background())

	type variant struct {
		name  string
		store *kvdriver.Store
		watch <-chan kvdriver.WatchResponse
		lat   []time.Duration
	}
	variants := []*variant{{name: "off"}, {name: "on"}}
	for i, v := range variants {
		store, err := mem.Open(ctx, mem.Config{})
		if err != nil {
			b.Fatal(err)
		}
		defer store.Close()
		v.store = store
		cfg := Config{DatabaseURL: url, Store: store, Slot: slot, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), StatusInterval: time.Second}
		if i == 1 {
			cfg.Slot = slot + "_sync"
			cfg.SyncStandbys = []string{"walreceiver"}
		}
		a, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{})
		go func() { defer close(done); _ = a.Run(ctx) }()
		defer func() { cancel(); <-done }()
		deadline := time.Now().Add(60 * time.Second)
		for !a.Status().Streaming {
			if time.Now().After(deadline) {
				b.Fatalf("agent %s not streaming after 60s: %v", v.name, a.Status().Err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		v.watch = store.Watch(ctx, "/Config/bench", 0)
	}
	op := func(i int) {
		val := fmt.Sprintf(`{"i": %d}`, i)
		want := []byte(`"value": ` + val)
		start := time.Now()
		if _, err := db.Exec(ctx, `SELECT storage.save_config('bench', $1::json)`, val); err != nil {
			b.Fatal(err)
		}
		for _, v := range variants {
			for seen := false; !seen; {
				select {
				case resp := <-v.watch:
					if resp.Err != nil {
						b.Fatal(resp.Err)
					}
					for _, ev := range resp.Events {
						seen = seen || bytes.Contains(ev.Value, want)
					}
				case <-time.After(30 * time.Second):
					b.Fatalf("%s: commit %d not in the store after 30s", v.name, i)
				}
			}
			v.lat = append(v.lat, time.Since(start))
		}
	}
	for i := 0; i < 20; i++ { // warm-up
		op(-1 - i)
	}
	for _, v := range variants {
		v.lat = v.lat[:0]
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		op(i)
	}
	b.StopTimer()
	pct := func(d []time.Duration, p float64) time.Duration {
		s := append([]time.Duration(nil), d...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[int(p*float64(len(s)-1))]
	}
	for _, p := range []struct {
		name string
		q    float64
	}{{"p50", .5}, {"p90", .9}} {
		off, on := pct(variants[0].lat, p.q), pct(variants[1].lat, p.q)
		b.ReportMetric(float64(off)/1e6, "ms-"+p.name+"-off")
		b.ReportMetric(float64(on)/1e6, "ms-"+p.name+"-on")
		b.ReportMetric(float64(on)/float64(off), "ratio-"+p.name+"-on/off")
	}
}
