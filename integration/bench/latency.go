package bench

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bagger/lenkwerk/kvdriver"
)

// Latencies summarizes one run of writes whose events a watcher saw.
type Latencies struct {
	N             int
	P50, P99, Max time.Duration
	// Elapsed is from the first write to the last write's event.
	Elapsed time.Duration
	// Write is the p50 of the writes' own round trips (the commit, or the
	// store put).
	Write time.Duration
}

func summarize(lat, write []time.Duration, elapsed time.Duration) Latencies {
	slices.Sort(lat)
	slices.Sort(write)
	q := func(d []time.Duration, p int) time.Duration { return d[(len(d)-1)*p/100] }
	return Latencies{N: len(lat), P50: q(lat, 50), P99: q(lat, 99), Max: lat[len(lat)-1], Elapsed: elapsed, Write: q(write, 50)}
}

// LatencyResult is the agent's commit → watch event latency next to the
// direct store put → watch event latency, measured in the same run.
type LatencyResult struct {
	Agent, Direct Latencies
	// AgentRSS is the agent process's peak RSS in bytes.
	AgentRSS int64
}

// Latency writes n transactions of one row (storage.config) at rate per
// second (0: a burst, back to back from one connection) while the agent
// runs, and measures from the start of each commit to a watcher (another
// store connection) seeing its key; then the same n puts straight into
// the store.
func (e *Env) Latency(ctx context.Context, kind StoreKind, n int, rate float64) (res LatencyResult, err error) {
	watchStore, err := e.OpenStore(ctx, kind)
	if err != nil {
		return res, err
	}
	defer watchStore.Close()

	// The baseline: direct puts.
	direct, err := e.OpenStore(ctx, kind)
	if err != nil {
		return res, err
	}
	defer direct.Close()
	raw := fmt.Sprintf("/raw%d", e.next())
	res.Direct, err = measureLatency(ctx, watchStore, raw, n, rate, func(ctx context.Context, i int) error {
		key := rowKey("lat", i)
		_, err := direct.Put(ctx, raw+"/"+key, rowValue(i, key, i))
		return err
	})
	if err != nil {
		return res, fmt.Errorf("direct: %w", err)
	}

	// Through Lenkwerk.
	st, err := e.startStreaming(ctx, kind, "lat", watchStore)
	if err != nil {
		return res, err
	}
	defer st.Close()
	a, prefix, conn := st.agent, st.prefix, st.conn
	res.Agent, err = measureLatency(ctx, watchStore, prefix+"/Config", n, rate, func(ctx context.Context, i int) error {
		key := rowKey("lat", i)
		_, err := conn.Exec(ctx, `INSERT INTO storage.config (key, value) VALUES ($1, json_build_object('g', $2::int, 'node', 'db' || ($2::int % 64) || '.example.net', 'port', 5432, 'status', 3, 'comment', 'benchmark row of a typical size'))`, key, i)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("agent: %w", err)
	}
	if err := a.exited(); err != nil {
		return res, err
	}
	res.AgentRSS, err = a.PeakRSS()
	return res, err
}

// warmup writes are sent before the measured ones (connections, prepared
// statements, the agent's first relation message) and not counted.
const warmup = 20

// measureLatency runs write(i) for i in [0, warmup+n) at rate per second
// (0: back to back), each producing key rowKey("lat", i) under prefix, and
// measures from the start of write(i) until a watcher on prefix sees it.
func measureLatency(ctx context.Context, store *kvdriver.Store, prefix string, n int, rate float64, write func(context.Context, int) error) (Latencies, error) {
	total := warmup + n
	_, rev, err := store.List(ctx, prefix)
	if err != nil {
		return Latencies{}, fmt.Errorf("bench: list %s: %w", prefix, err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := store.Watch(wctx, prefix, rev)

	var mu sync.Mutex
	start := make([]time.Time, total)
	seen := make([]time.Time, total)
	left := total
	all := make(chan struct{})
	watchErr := make(chan error, 1)
	go func() {
		for r := range ch {
			now := time.Now()
			if r.Err != nil {
				watchErr <- r.Err
				return
			}
			mu.Lock()
			for _, ev := range r.Events {
				i, ok := latIndex(ev.Key)
				if ok && i < total && seen[i].IsZero() && ev.Type == kvdriver.OpPut {
					seen[i] = now
					if left--; left == 0 {
						close(all)
					}
				}
			}
			mu.Unlock()
		}
	}()

	write0 := make([]time.Duration, 0, n)
	var first time.Time
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) / rate)
	}
	next := time.Now()
	for i := range total {
		if interval > 0 {
			// Open loop: the schedule does not wait for slow writes.
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		}
		t := time.Now()
		if i == warmup {
			first = t
		}
		mu.Lock()
		start[i] = t
		mu.Unlock()
		if err := write(ctx, i); err != nil {
			return Latencies{}, fmt.Errorf("write %d: %w", i, err)
		}
		if i >= warmup {
			write0 = append(write0, time.Since(t))
		}
	}
	select {
	case <-all:
	case err := <-watchErr:
		return Latencies{}, fmt.Errorf("bench: watch: %w", err)
	case <-time.After(30 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		return Latencies{}, fmt.Errorf("bench: %d of %d writes not seen by the watcher within 30s", left, total)
	}
	mu.Lock()
	defer mu.Unlock()
	lat := make([]time.Duration, 0, n)
	var last time.Time
	for i := warmup; i < total; i++ {
		lat = append(lat, seen[i].Sub(start[i]))
		if seen[i].After(last) {
			last = seen[i]
		}
	}
	return summarize(lat, write0, last.Sub(first)), nil
}

// latIndex parses i from a key ending in rowKey("lat", i).
func latIndex(key string) (int, bool) {
	j := strings.LastIndex(key, "/lat-")
	if j < 0 {
		return 0, false
	}
	i, err := strconv.Atoi(key[j+len("/lat-"):])
	return i, err == nil
}
