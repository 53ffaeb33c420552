// Command lwbench runs the Lenkwerk benchmark scenarios of package bench
// once each and prints them as a Markdown table, every figure next to its
// raw baseline from the same run and the target it is held to:
//
//	go run ./integration/bench/cmd/lwbench [-rows 100000] [-repeat 1] [-large] [-drivers] [-fanout 10,100,300] [-follow 10,50] [-json out.json]
//
// -only fanout runs just the fan-out scenario (~3–4 min): 1 (the
// baseline) and then -fanout consumers, each with a Store of its own,
// watching the agent's tree under a steady stream and a rotation, then
// -follow `lenkwerk follow` processes each keeping a local copy, etcd and
// pgkv.
//
// -drivers also runs the driver benchmarks (kvdriver/etcd, kvdriver/pgkv)
// with `go test` and appends their output.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bagger/lenkwerk/integration/bench"
)

// The fan-out scenario: 5 s of steady stream at 100 tx/s, then one
// rotation transaction of 300 keys.
const (
	fanoutSteady = 500
	fanoutBurst  = 300
)

func main() {
	if err := run(); err != nil {
		slog.Error("lwbench", "err", err)
		os.Exit(1)
	}
}

type row struct {
	What, Figure, Baseline, Ratio, Target, RSS string
	Raw                                        any
}

func run() error {
	rows := flag.Int("rows", 100_000, "rows of the bulk, initial sync and decode scenarios")
	large := flag.Bool("large", false, "also the 10×rows transaction (1,000,000 rows by default)")
	drivers := flag.Bool("drivers", false, "also run the driver benchmarks of kvdriver/etcd and kvdriver/pgkv")
	inProcess := flag.Bool("inprocess", false, "run the agent in this process (no RSS figures)")
	only := flag.String("only", "", "comma-separated scenarios: latency,bulk,sync,decode,fanout (default all)")
	fanout := flag.String("fanout", "10,100,300", "consumer counts of the fan-out scenario (its baseline is 1 consumer)")
	followFan := flag.String("follow", "10,50", "`lenkwerk follow` process counts of the fan-out scenario (\"\": none)")
	jsonOut := flag.String("json", "", "write the raw results as JSON to this file")
	repeat := flag.Int("repeat", 1, "run the throughput and decode scenarios this many times; the row shows the run with the median ratio and the range")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	want := func(s string) bool { return *only == "" || strings.Contains(","+*only+",", ","+s+",") }
	env, err := bench.NewEnv(ctx, bench.Options{InProcess: *inProcess})
	if err != nil {
		return err
	}
	defer env.Close()

	var out []row
	add := func(r row) {
		out = append(out, r)
		fmt.Fprintf(os.Stderr, "%s: %s (baseline %s, %s)\n", r.What, r.Figure, r.Baseline, r.Ratio)
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000) }
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Nanoseconds())/1000) }
	mb := func(b int64) string {
		if b == 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f MB", float64(b)/(1<<20))
	}
	stores := []bench.StoreKind{bench.Etcd, bench.PGKV}

	// median runs f *repeat times and returns the run with the median
	// ratio, the range of the ratios and every run.
	median := func(f func() (any, float64, error)) (any, string, []any, error) {
		var runs []any
		var ratios []float64
		for range max(*repeat, 1) {
			r, ratio, err := f()
			if err != nil {
				return nil, "", nil, err
			}
			runs = append(runs, r)
			ratios = append(ratios, ratio)
		}
		idx := make([]int, len(runs))
		for i := range idx {
			idx[i] = i
		}
		sort.Slice(idx, func(a, b int) bool { return ratios[idx[a]] < ratios[idx[b]] })
		rng := ""
		if len(runs) > 1 {
			rng = fmt.Sprintf(" (%.0f–%.0f%% in %d runs)", 100*ratios[idx[0]], 100*ratios[idx[len(idx)-1]], len(runs))
		}
		return runs[idx[(len(idx)-1)/2]], rng, runs, nil
	}
	thr := func(what, target string, f func() (bench.ThroughputResult, error)) error {
		m, rng, runs, err := median(func() (any, float64, error) {
			r, err := f()
			return r, r.Ratio(), err
		})
		if err != nil {
			return err
		}
		r := m.(bench.ThroughputResult)
		rss := int64(0)
		for _, x := range runs {
			rss = max(rss, x.(bench.ThroughputResult).AgentRSS)
		}
		add(row{
			What:     what,
			Figure:   fmt.Sprintf("%.0f rows/s; CPU %s µs/row (agent %s, PostgreSQL %s, etcd+bench %s), %.1f cores", r.Agent.PerSec(), us(r.Agent.CPUPerRow()), us(r.Agent.CPU.Agent/time.Duration(r.Agent.Rows)), us(r.Agent.CPU.Postgres/time.Duration(r.Agent.Rows)), us(r.Agent.CPU.Bench/time.Duration(r.Agent.Rows)), r.Agent.Cores()),
			Baseline: fmt.Sprintf("%.0f keys/s; CPU %s µs/key, %.1f cores", r.Direct.PerSec(), us(r.Direct.CPUPerRow()), r.Direct.Cores()),
			Ratio:    fmt.Sprintf("%.0f%%%s", 100*r.Ratio(), rng),
			Target:   target, RSS: mb(rss), Raw: runs,
		})
		return nil
	}
	// First: the agent runs in this process, next to the embedded etcd
	// server, whose heap the other scenarios fill.
	if want("decode") {
		m, rng, runs, err := median(func() (any, float64, error) {
			r, err := env.Decode(ctx, *rows)
			return r, r.Ratio(), err
		})
		if err != nil {
			return fmt.Errorf("decode: %w", err)
		}
		r := m.(bench.DecodeResult)
		add(row{
			What:     fmt.Sprintf("decode, 1 × %d rows (store discards)", *rows),
			Figure:   fmt.Sprintf("%.0f rows/s", r.Agent.PerSec()),
			Baseline: fmt.Sprintf("%.0f rows/s (pg_recvlogical)", r.Recvlogical.PerSec()),
			Ratio:    fmt.Sprintf("%.0f%%%s; agent startup %s ms", 100*r.Ratio(), rng, ms(r.Startup)),
			Target:   "≥ 50%", RSS: "–", Raw: runs,
		})
	}
	if want("latency") {
		for _, kind := range stores {
			for _, c := range []struct {
				name string
				n    int
				rate float64
			}{{"100 tx/s, 2,000 tx", 2000, 100}, {"burst, 1,000 tx", 1000, 0}} {
				r, err := env.Latency(ctx, kind, c.n, c.rate)
				if err != nil {
					return fmt.Errorf("latency %s %s: %w", kind, c.name, err)
				}
				target := ""
				if kind == bench.Etcd && c.rate == 100 {
					target = "p50 ≤ 2, p99 ≤ 10, +p50 ≤ 1"
				}
				add(row{
					What:     fmt.Sprintf("latency %s, %s (p50/p99/max ms)", kind, c.name),
					Figure:   fmt.Sprintf("%s / %s / %s", ms(r.Agent.P50), ms(r.Agent.P99), ms(r.Agent.Max)),
					Baseline: fmt.Sprintf("%s / %s / %s", ms(r.Direct.P50), ms(r.Direct.P99), ms(r.Direct.Max)),
					Ratio:    fmt.Sprintf("+%s ms p50", ms(r.Agent.P50-r.Direct.P50)),
					Target:   target, RSS: mb(r.AgentRSS), Raw: r,
				})
			}
		}
	}
	if want("bulk") {
		for _, kind := range stores {
			for _, txRows := range []int{*rows, 10} {
				err := thr(fmt.Sprintf("bulk %s, %d × %d rows", kind, *rows/txRows, txRows), "≥ 70%", func() (bench.ThroughputResult, error) {
					return env.Bulk(ctx, kind, *rows, txRows)
				})
				if err != nil {
					return fmt.Errorf("bulk %s: %w", kind, err)
				}
			}
		}
	}
	if want("sync") {
		for _, kind := range stores {
			err := thr(fmt.Sprintf("initial sync %s, %d rows", kind, *rows), "≥ 70%", func() (bench.ThroughputResult, error) {
				return env.InitialSync(ctx, kind, *rows)
			})
			if err != nil {
				return fmt.Errorf("initial sync %s: %w", kind, err)
			}
		}
	}
	if want("fanout") {
		parse := func(flag, list string) ([]int, error) {
			var counts []int
			for _, f := range strings.Split(list, ",") {
				if strings.TrimSpace(f) == "" {
					continue
				}
				n, err := strconv.Atoi(strings.TrimSpace(f))
				if err != nil || n < 1 {
					return nil, fmt.Errorf("-%s: bad count %q", flag, f)
				}
				counts = append(counts, n)
			}
			return counts, nil
		}
		counts, err := parse("fanout", *fanout)
		if err != nil {
			return err
		}
		followCounts, err := parse("follow", *followFan)
		if err != nil {
			return err
		}
		if *inProcess {
			followCounts = nil // they run the binary
		}
		lat := func(l bench.Latencies) string { return fmt.Sprintf("%s / %s / %s", ms(l.P50), ms(l.P99), ms(l.Max)) }
		for _, kind := range stores {
			var base bench.FanoutResult
			for _, n := range append([]int{1}, counts...) {
				r, err := env.Fanout(ctx, kind, n, fanoutSteady, 100, fanoutBurst)
				if err != nil {
					return fmt.Errorf("fanout %s %d: %w", kind, n, err)
				}
				if n == 1 {
					base = r
				}
				secs := r.Elapsed.Seconds()
				add(row{
					What: fmt.Sprintf("fan-out %s, %d consumers: 100 tx/s, then 1 tx of %d keys (p50/p99/max ms)", kind, n, fanoutBurst),
					Figure: fmt.Sprintf("steady %s; burst %s (all in %s ms); PostgreSQL connections %d, etcd connections %d; cores: agent %.2f, PostgreSQL %.2f, etcd+consumers %.2f",
						lat(r.Steady), lat(r.Burst), ms(r.Burst.Elapsed), r.PGConnections, r.EtcdConnections,
						r.CPU.Agent.Seconds()/secs, r.CPU.Postgres.Seconds()/secs, r.CPU.Bench.Seconds()/secs),
					Baseline: fmt.Sprintf("1 consumer: steady %s; burst %s", lat(base.Steady), lat(base.Burst)),
					Ratio:    fmt.Sprintf("p99 ×%.1f", float64(r.Steady.P99)/float64(max(base.Steady.P99, 1))),
					Target:   "steady p99 ≤ 50", RSS: "–", Raw: r,
				})
			}
			for _, n := range followCounts {
				t := time.Now()
				r, err := env.FanoutFollow(ctx, kind, n, fanoutSteady, 100, fanoutBurst)
				if err != nil {
					return fmt.Errorf("fanout follow %s %d: %w", kind, n, err)
				}
				fmt.Fprintf(os.Stderr, "fan-out %s, %d follow processes: %.0f s\n", kind, n, time.Since(t).Seconds())
				secs := r.Elapsed.Seconds()
				add(row{
					What: fmt.Sprintf("fan-out %s, %d `lenkwerk follow` processes, commit → local copy's commit: 100 tx/s, then 1 tx of %d keys (p50/p99/max ms)", kind, n, fanoutBurst),
					Figure: fmt.Sprintf("steady %s; burst %s (all in %s ms); PostgreSQL connections %d; cores: agent %.2f, PostgreSQL (with the copies) %.2f, follow processes %.2f (%.3f each), bench+etcd %.2f; startup %s ms",
						lat(r.Steady), lat(r.Burst), ms(r.Burst.Elapsed), r.PGConnections,
						r.CPU.Agent.Seconds()/secs, r.CPU.Postgres.Seconds()/secs, r.FollowersCPU.Seconds()/secs, r.FollowersCPU.Seconds()/secs/float64(n), r.CPU.Bench.Seconds()/secs, ms(r.Startup)),
					Baseline: fmt.Sprintf("1 in-process consumer: steady %s; burst %s", lat(base.Steady), lat(base.Burst)),
					Ratio:    fmt.Sprintf("p99 ×%.1f", float64(r.Steady.P99)/float64(max(base.Steady.P99, 1))),
					Target:   "steady p99 ≤ 50", RSS: mb(r.FollowerPeakRSS) + " (largest follow process)", Raw: r,
				})
			}
		}
	}
	if *large {
		r, err := env.LargeTransaction(ctx, bench.Etcd, 10**rows)
		if err != nil {
			return fmt.Errorf("large transaction: %w", err)
		}
		add(row{
			What:   fmt.Sprintf("one transaction of %d rows, etcd", 10**rows),
			Figure: fmt.Sprintf("%.0f rows/s", r.Agent.PerSec()), Baseline: "–", Ratio: "–",
			Target: "RSS < 100 MB", RSS: mb(r.AgentRSS), Raw: r,
		})
	}

	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("\n%s, %s/%s, %d CPUs, load average %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "))
	fmt.Println("| scenario | Lenkwerk | raw baseline | ratio | target | agent peak RSS |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range out {
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", r.What, r.Figure, r.Baseline, r.Ratio, r.Target, r.RSS)
	}
	if *jsonOut != "" {
		b, err := json.MarshalIndent(out, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*jsonOut, b, 0o644); err != nil {
			return err
		}
	}
	if *drivers {
		fmt.Println()
		cmd := exec.CommandContext(ctx, "go", "test", "-count=1", "-run", "^$", "-bench", ".", "./kvdriver/etcd/", "./kvdriver/pgkv/")
		cmd.Stdout, cmd.Stderr = io.MultiWriter(os.Stdout), os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("driver benchmarks: %w", err)
		}
	}
	return nil
}
