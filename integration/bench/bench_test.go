package bench_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/bagger/lenkwerk/integration/bench"
)

// Every benchmark iteration is one whole scenario (setup included, so
// iterations take seconds and the default -benchtime runs each once);
// ns/op is that wall time. The figures are the reported metrics, each next
// to the raw baseline measured in the same iteration:
//
//	go test -run '^$' -bench . ./integration/bench/
//
// LWBENCH_INPROCESS=1 runs the agent inside the test binary, for
// -cpuprofile (no RSS figures then). LWBENCH_ROWS scales the 100,000-row
// scenarios (e.g. 10000 for a quick look); LWBENCH_LARGE=0 leaves out the
// 1,000,000-row transaction.

var (
	envOnce sync.Once
	env     *bench.Env
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		if err := env.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
	}
	os.Exit(code)
}

// sharedEnv starts the servers (and builds the agent) once per test binary.
func sharedEnv(tb testing.TB, inProcess bool) *bench.Env {
	tb.Helper()
	envOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		env, envErr = bench.NewEnv(ctx, bench.Options{InProcess: inProcess})
	})
	if envErr != nil {
		tb.Fatal(envErr)
	}
	if env.InProcess != inProcess {
		tb.Fatalf("the shared Env runs the agent in process: %v, want %v", env.InProcess, inProcess)
	}
	return env
}

func benchEnv(b *testing.B) *bench.Env {
	return sharedEnv(b, os.Getenv("LWBENCH_INPROCESS") == "1")
}

func rowsOr(def int) int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("LWBENCH_ROWS"), &n); err == nil && n > 0 {
		return n
	}
	return def
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func reportRSS(b *testing.B, rss int64) {
	if rss > 0 {
		b.ReportMetric(float64(rss)/(1<<20), "agent-RSS-MB")
	}
}

// BenchmarkDecode: the agent's decoding and encoding alone (the store
// discards) against pg_recvlogical writing the same stream to /dev/null.
// It runs first: the agent runs in the test process, next to the embedded
// etcd server, whose heap the other benchmarks fill.
func BenchmarkDecode(b *testing.B) {
	rows := rowsOr(100_000)
	b.Run(fmt.Sprintf("tx%d", rows), func(b *testing.B) {
		e := benchEnv(b)
		for b.Loop() {
			r, err := e.Decode(context.Background(), rows)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(r.Agent.PerSec(), "rows/s")
			b.ReportMetric(r.Recvlogical.PerSec(), "recvlogical-rows/s")
			b.ReportMetric(100*r.Ratio(), "%-of-recvlogical")
			b.ReportMetric(float64(r.WAL)/(1<<20)/r.Agent.Elapsed.Seconds(), "WAL-MB/s")
			b.ReportMetric(ms(r.Startup), "startup-ms")
		}
	})
}

// BenchmarkLatency: commit → watch event through the agent, next to a
// direct put → watch event, at a paced 100 tx/s and in a burst.
func BenchmarkLatency(b *testing.B) {
	for _, kind := range []bench.StoreKind{bench.Etcd, bench.PGKV} {
		for _, c := range []struct {
			name string
			n    int
			rate float64
		}{
			{"steady100", 2000, 100},
			{"burst", 1000, 0},
		} {
			b.Run(fmt.Sprintf("%s/%s", kind, c.name), func(b *testing.B) {
				e := benchEnv(b)
				for b.Loop() {
					r, err := e.Latency(context.Background(), kind, c.n, c.rate)
					if err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(ms(r.Agent.P50), "p50-ms")
					b.ReportMetric(ms(r.Agent.P99), "p99-ms")
					b.ReportMetric(ms(r.Agent.Max), "max-ms")
					b.ReportMetric(ms(r.Direct.P50), "direct-p50-ms")
					b.ReportMetric(ms(r.Direct.P99), "direct-p99-ms")
					b.ReportMetric(ms(r.Direct.Max), "direct-max-ms")
					b.ReportMetric(ms(r.Agent.P50-r.Direct.P50), "added-p50-ms")
					b.ReportMetric(ms(r.Agent.Write), "commit-p50-ms")
					b.ReportMetric(float64(r.Agent.N)/r.Agent.Elapsed.Seconds(), "tx/s")
					reportRSS(b, r.AgentRSS)
				}
			})
		}
	}
}

func reportThroughput(b *testing.B, r bench.ThroughputResult) {
	b.ReportMetric(r.Agent.PerSec(), "rows/s")
	b.ReportMetric(r.Direct.PerSec(), "direct-keys/s")
	b.ReportMetric(100*r.Ratio(), "%-of-direct")
	reportRSS(b, r.AgentRSS)
	if r.StoreTime > 0 {
		b.ReportMetric(100*r.StoreTime.Seconds()/r.Agent.Elapsed.Seconds(), "%-in-store")
		b.ReportMetric(float64(r.StoreWrites), "store-writes")
		b.ReportMetric(ms(r.StoreTime)/float64(r.StoreWrites), "ms/store-write")
	}
	b.ReportMetric(float64(r.Agent.CPUPerRow().Nanoseconds())/1000, "cpu-µs/row")
	b.ReportMetric(float64(r.Direct.CPUPerRow().Nanoseconds())/1000, "direct-cpu-µs/row")
	b.ReportMetric(r.Agent.Cores(), "cores")
	b.ReportMetric(r.Direct.Cores(), "direct-cores")
	if r.Direct.Writes > 0 {
		b.ReportMetric(ms(r.Direct.Elapsed)/float64(r.Direct.Writes), "direct-ms/write")
	}
}

// BenchmarkBulk: one transaction of 100,000 rows, and 10,000 transactions
// of 10 rows, until all keys are in the store; next to the same number of
// keys applied straight into the store in the driver's largest batches.
func BenchmarkBulk(b *testing.B) {
	rows := rowsOr(100_000)
	for _, kind := range []bench.StoreKind{bench.Etcd, bench.PGKV} {
		for _, c := range []struct {
			name   string
			txRows int
		}{
			{fmt.Sprintf("tx%d", rows), rows},
			{fmt.Sprintf("%dx10", rows/10), 10},
		} {
			b.Run(fmt.Sprintf("%s/%s", kind, c.name), func(b *testing.B) {
				e := benchEnv(b)
				for b.Loop() {
					r, err := e.Bulk(context.Background(), kind, rows, c.txRows)
					if err != nil {
						b.Fatal(err)
					}
					reportThroughput(b, r)
				}
			})
		}
	}
}

// BenchmarkInitialSync: 100,000 rows copied into an empty store.
func BenchmarkInitialSync(b *testing.B) {
	rows := rowsOr(100_000)
	for _, kind := range []bench.StoreKind{bench.Etcd, bench.PGKV} {
		b.Run(fmt.Sprintf("%s/%d", kind, rows), func(b *testing.B) {
			e := benchEnv(b)
			for b.Loop() {
				r, err := e.InitialSync(context.Background(), kind, rows)
				if err != nil {
					b.Fatal(err)
				}
				reportThroughput(b, r)
			}
		})
	}
}

// BenchmarkLargeTransaction: the agent's memory through one transaction
// of 1,000,000 rows into etcd (the agent applies it in chunks); no
// baseline (BenchmarkBulk has the rate), about 80 s.
func BenchmarkLargeTransaction(b *testing.B) {
	if os.Getenv("LWBENCH_LARGE") == "0" {
		b.Skip("LWBENCH_LARGE=0")
	}
	rows := 10 * rowsOr(100_000)
	b.Run(fmt.Sprintf("etcd/tx%d", rows), func(b *testing.B) {
		e := benchEnv(b)
		for b.Loop() {
			r, err := e.LargeTransaction(context.Background(), bench.Etcd, rows)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(r.Agent.PerSec(), "rows/s")
			reportRSS(b, r.AgentRSS)
		}
	})
}
