package bench_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/bench"
)

// TestHarness runs every scenario on a few rows, with the agent in
// process (no build), and checks what the harness measured: it must count
// every write and every key, and report positive times.
func TestHarness(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, err := bench.NewEnv(ctx, bench.Options{InProcess: true, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	const rows = 100

	for _, kind := range []bench.StoreKind{bench.Etcd, bench.PGKV} {
		t.Run(string(kind), func(t *testing.T) {
			lat, err := e.Latency(ctx, kind, 20, 200)
			if err != nil {
				t.Fatalf("Latency: %v", err)
			}
			for name, l := range map[string]bench.Latencies{"agent": lat.Agent, "direct": lat.Direct} {
				if l.N != 20 || l.P50 <= 0 || l.P99 < l.P50 || l.Max < l.P99 {
					t.Errorf("Latency %s: %+v, want 20 samples, 0 < p50 <= p99 <= max", name, l)
				}
			}
			// 3 consumers with connections of their own; every one must
			// receive every key of the stream and of the rotation.
			f, err := e.Fanout(ctx, kind, 3, 20, 200, 10)
			if err != nil {
				t.Fatalf("Fanout: %v", err)
			}
			conns := f.EtcdConnections
			if kind == bench.PGKV {
				conns = f.PGConnections
			}
			if f.Steady.N != 3*20 || f.Burst.N != 3*10 || f.Steady.P50 <= 0 || f.Burst.Max < f.Burst.P50 || conns < 3 {
				t.Errorf("Fanout: %+v, want 60 steady and 30 burst samples, positive times, a connection per consumer", f)
			}
			for _, txRows := range []int{rows, 10} {
				r, err := e.Bulk(ctx, kind, rows, txRows)
				if err != nil {
					t.Fatalf("Bulk(%d, %d): %v", rows, txRows, err)
				}
				checkThroughput(t, "Bulk", r, rows)
				// The agent's writes are counted: at least one, at most one
				// per transaction (group commit may merge them; an idle
				// checkpoint may follow).
				if most := int64(rows/txRows) + 2; r.StoreWrites < 1 || r.StoreWrites > most {
					t.Errorf("Bulk(%d, %d): %d store writes, want 1 to %d", rows, txRows, r.StoreWrites, most)
				}
				if kind == bench.PGKV {
					break // the rest is the same harness code as with etcd
				}
			}
			if kind == bench.PGKV {
				return
			}
			r, err := e.InitialSync(ctx, kind, rows)
			if err != nil {
				t.Fatalf("InitialSync: %v", err)
			}
			checkThroughput(t, "InitialSync", r, rows)
		})
	}
	d, err := e.Decode(ctx, rows)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if d.Discarded != rows || d.Recvlogical.Rows != 2*rows || d.Agent.Elapsed <= 0 || d.Recvlogical.Elapsed <= 0 || d.WAL <= 0 {
		t.Errorf("Decode: %+v, want %d rows discarded and positive times", d, rows)
	}
}

func checkThroughput(t *testing.T, name string, r bench.ThroughputResult, rows int) {
	t.Helper()
	// The baseline runs before and after the agent.
	if r.Agent.Rows != rows || r.Direct.Rows != 2*rows || r.Direct.Writes != 2 || r.Agent.Elapsed <= 0 || r.Direct.Elapsed <= 0 || r.StoreTime <= 0 {
		t.Errorf("%s: %+v, want %d rows through the agent, twice %d in one batch directly, positive times", name, r, rows, rows)
	}
}

// TestFollowFanout runs the fan-out scenario with two `lenkwerk follow`
// processes (the binary of LENKWERK_BIN, else built) and checks that every
// copy committed every key and that the harness measured it.
func TestFollowFanout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e, err := bench.NewEnv(ctx, bench.Options{Dir: t.TempDir(), Bin: os.Getenv("LENKWERK_BIN")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	for _, kind := range []bench.StoreKind{bench.Etcd, bench.PGKV} {
		t.Run(string(kind), func(t *testing.T) {
			f, err := e.FanoutFollow(ctx, kind, 2, 20, 200, 10)
			if err != nil {
				t.Fatalf("FanoutFollow: %v", err)
			}
			if f.Steady.N != 2*20 || f.Burst.N != 2*10 || f.Steady.P50 <= 0 || f.Burst.Max < f.Burst.P50 ||
				f.FollowerPeakRSS <= 0 || f.Elapsed <= 0 || f.PGConnections < 2 {
				t.Errorf("FanoutFollow: %+v, want 40 steady and 20 burst samples, positive times, an RSS, a connection per copy", f)
			}
		})
	}
}
